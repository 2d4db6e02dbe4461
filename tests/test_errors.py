"""Bad input gets a clear error that names the problem."""

import pytest
import torch

from conftest import build, tiny_config
from modeling_hope import HopeCache, HopeConfig


@pytest.mark.parametrize("field,value,match", [
    ("mixer_type", "mamba", "mixer_type"),
    ("hidden_size", 31, "hidden_size"),
    ("num_attention_heads", 0, "num_attention_heads"),
    ("memory_chunk_size", 0, "memory_chunk_size"),
    ("memory_activation", "relu", "memory_activation"),
    ("adaptive_projections", ["q"], "adaptive_projections"),
    ("cms_levels", [], "cms_levels"),
    ("cms_levels", [{"intermediate_size": 8, "period": -1}], "period"),
    ("cms_levels", [{"intermediate_size": 8, "speed": 2}], "cms_levels"),
    ("cms_levels", [{"intermediate_size": 8, "lr": -0.1}], "lr"),
    ("conv_size", -1, "conv_size"),
    ("memory_impl", "fast", "memory_impl"),
    ("memory_kernel", "cuda", "memory_kernel"),
    ("num_key_value_heads", 3, "num_key_value_heads"),
])
def test_invalid_config_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_titans_with_adaptive_projections_is_refused():
    with pytest.raises(ValueError, match="titans"):
        tiny_config(mixer_type="titans", adaptive_projections=["k"])


def test_token_ids_outside_vocabulary():
    model = build(tiny_config())
    for bad in (61, -1):
        with pytest.raises(ValueError, match="vocabulary"):
            model(torch.tensor([[3, 4, bad]]))


def test_cache_from_another_config_or_batch():
    model = build(tiny_config())
    ids = torch.randint(2, 61, (2, 5))
    cache = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="batch size"):
        model(torch.randint(2, 61, (3, 1)), cache=cache)
    other = build(tiny_config(hidden_size=32))
    with pytest.raises(ValueError, match="another configuration"):
        other(torch.randint(2, 61, (2, 1)), cache=cache)
    with pytest.raises(ValueError, match="batch size"):
        model(ids, cache=HopeCache(model.config, batch_size=4))
    from transformers import DynamicCache
    with pytest.raises(TypeError, match="HopeCache"):
        model(ids, cache=DynamicCache())


def test_attention_mask_of_wrong_width():
    model = build(tiny_config())
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randint(2, 61, (2, 5)), attention_mask=torch.ones(2, 7, dtype=torch.long))


def test_in_context_levels_need_the_lm_head():
    config = tiny_config(cms_levels=[{"intermediate_size": 8, "period": 2, "lr": 0.1}])
    model = build(config)
    with pytest.raises(ValueError, match="HopeForCausalLM"):
        model.model(torch.randint(2, 61, (1, 4)))


def test_cache_cannot_be_cropped():
    model = build(tiny_config())
    cache = model(torch.randint(2, 61, (1, 4)), use_cache=True).cache
    with pytest.raises(NotImplementedError, match="cropped"):
        cache.crop(1)


def test_config_round_trip_keeps_every_field(tmp_path):
    config = tiny_config(mixer_type="titans", use_momentum=False, cms_levels=[
        {"intermediate_size": 8, "period": 0, "lr": 0.0, "outer_period": 4}])
    config.save_pretrained(tmp_path)
    loaded = HopeConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
