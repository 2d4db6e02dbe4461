"""Spec 4.3: padding changes nothing."""

import pytest
import torch

from conftest import build, random_configs

CONFIGS = random_configs(6, seed=11)


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c.mixer_type}-{i}" for i, c in enumerate(CONFIGS)])
def test_left_padded_generation_equals_alone(config):
    model = build(config, seed=2)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(2, config.vocab_size, (n,), generator=gen) for n in (9, 5, 7)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=6,
                               do_sample=False, pad_token_id=0)
        assert torch.equal(batched[i, width:], alone[0, len(p):])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        for i, p in enumerate(prompts):
            ref = model(p[None]).logits[0]
            assert (logits[i, width - len(p):] - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c.mixer_type}-{i}" for i, c in enumerate(CONFIGS)])
def test_right_padding_keeps_real_logits(config):
    model = build(config, seed=3)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(2, config.vocab_size, (2, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    padded = ids.clone()
    padded[0, 6:] = 0
    with torch.no_grad():
        out = model(padded, attention_mask=mask).logits
        assert (out[0, :6] - model(ids[:1, :6]).logits[0]).abs().max() <= 1e-5
        assert (out[1] - model(ids[1:]).logits[0]).abs().max() <= 1e-5


def test_pads_in_the_middle_of_a_streamed_batch():
    """Rows of a cached batch may receive different numbers of real tokens per call (counters are per row)."""
    config = CONFIGS[1]
    model = build(config, seed=6)
    ids = torch.randint(2, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(ids).logits
        # call 1: row 0 gets 5 tokens, row 1 gets 3 (right-padded); call 2: the rest, left-padded
        first = torch.zeros(2, 5, dtype=torch.long)
        first[0], first[1, :3] = ids[0, :5], ids[1, :3]
        m1 = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
        out1 = model(first, attention_mask=m1, use_cache=True)
        second = torch.zeros(2, 9, dtype=torch.long)
        second[0, 2:], second[1] = ids[0, 5:], ids[1, 3:]
        m2 = torch.tensor([[0] * 2 + [1] * 7, [1] * 9])
        out2 = model(second, attention_mask=torch.cat([m1, m2], 1), cache=out1.cache, use_cache=True)
    assert (out1.logits[0] - ref[0, :5]).abs().max() <= 1e-5
    assert (out1.logits[1, :3] - ref[1, :3]).abs().max() <= 1e-5
    assert (out2.logits[0, 2:] - ref[0, 5:]).abs().max() <= 1e-5
    assert (out2.logits[1] - ref[1, 3:]).abs().max() <= 1e-5
