"""Named sizes and their Llama twins (equal vocabulary, hidden size, depth; parameters within 5%)."""

import pytest

from modeling_hope.presets import PRESETS, count_parameters, hope_config, llama_twin_config

EXPECTED = {"hope-5m": 5e6, "hope-20m": 20e6, "hope-340m": 340e6, "hope-760m": 760e6, "hope-1.3b": 1.3e9}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_size_and_llama_twin(name):
    config = hope_config(name)
    n = count_parameters(config)
    assert abs(n / EXPECTED[name] - 1) < 0.1, n
    twin = llama_twin_config(config)
    assert twin.hidden_size == config.hidden_size and twin.num_hidden_layers == config.num_hidden_layers
    assert twin.vocab_size == config.vocab_size
    assert abs(count_parameters(twin) / n - 1) <= 0.05
    if name in ("hope-340m", "hope-760m", "hope-1.3b"):
        assert (config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (24, 16, 32000)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        hope_config("hope-7b")


def test_preset_overrides():
    assert hope_config("hope-5m", mixer_type="titans").mixer_type == "titans"
