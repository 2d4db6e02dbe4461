"""Spec 4.1: the logits are the same however a sequence is cut into calls; greedy generate = argmax loop."""

import pytest
import torch

from conftest import build, random_configs

CONFIGS = random_configs(9, seed=2)
LENGTH = 13


def ids_for(config, batch=2, length=LENGTH, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, config.vocab_size, (batch, length), generator=gen)


def run_split(model, ids, cuts):
    cache, outs = None, []
    for a, b in zip([0, *cuts], [*cuts, ids.shape[1]]):
        out = model(ids[:, a:b], cache=cache, use_cache=True)
        cache = out.cache
        outs.append(out.logits)
    return torch.cat(outs, 1)


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c.mixer_type}-{i}" for i, c in enumerate(CONFIGS)])
def test_streaming_invariance(config):
    model = build(config)
    ids = ids_for(config)
    with torch.no_grad():
        full = model(ids).logits
        token_by_token = run_split(model, ids, [5, *range(6, LENGTH)])
        gen = torch.Generator().manual_seed(7)
        cuts = sorted(torch.randperm(LENGTH - 1, generator=gen)[:4].add(1).tolist())
        random_split = run_split(model, ids, cuts)
    assert (full - token_by_token).abs().max() <= 1e-4
    assert (full - random_split).abs().max() <= 1e-4


@pytest.mark.parametrize("config", CONFIGS[:6], ids=[f"{c.mixer_type}-{i}" for i, c in enumerate(CONFIGS[:6])])
def test_greedy_generate_equals_argmax_loop(config):
    model = build(config, seed=1)
    ids = ids_for(config, length=6, seed=3)
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=7, do_sample=False,
                               pad_token_id=0)
    seq = ids
    with torch.no_grad():
        for _ in range(7):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, seq)


def test_in_context_level_changes_the_output():
    """A level with a non-zero learning rate really learns: later positions differ from lr = 0, earlier ones not."""
    from conftest import tiny_config

    levels = [{"intermediate_size": 16}, {"intermediate_size": 8, "period": 4, "lr": 0.5}]
    learning = build(tiny_config(cms_levels=levels))
    frozen_levels = [dict(levels[0]), dict(levels[1], lr=0.0)]
    frozen = build(tiny_config(cms_levels=frozen_levels))
    frozen.load_state_dict(learning.state_dict())
    ids = ids_for(learning.config, length=12)
    with torch.no_grad():
        diff = (learning(ids).logits - frozen(ids).logits).abs().amax(-1)
    assert diff[:, :4].max() == 0
    assert (diff[:, 4:] > 1e-6).all()


@pytest.mark.parametrize("mixer", ["self_modifying_titans", "titans", "attention"])
def test_decoding_state_size_does_not_grow_with_context(mixer):
    """The memories' state is fixed-size: decoding keeps the same bytes after 8 tokens and after 200 (the attention
    mixer's KV cache, the control, grows by one key and value per token and layer)."""
    from conftest import tiny_config

    config = tiny_config(mixer_type=mixer, cms_levels=[{"intermediate_size": 24}, {"intermediate_size": 8, "period": 5,
                                                                                    "lr": 0.1}])
    model = build(config)
    ids = torch.randint(2, config.vocab_size, (2, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model(ids[:, :8], use_cache=True).cache
        short = cache.nbytes()
        for t in range(8, 200):
            cache = model(ids[:, t:t + 1], cache=cache, use_cache=True).cache
    kv_growth = 2 * config.num_hidden_layers * 2 * config.hidden_size * 4 * 192  # K and V, float32, 192 tokens
    if mixer == "attention":
        assert cache.nbytes() - short >= kv_growth
    else:
        assert cache.nbytes() == short
