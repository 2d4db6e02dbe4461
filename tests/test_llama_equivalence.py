"""Spec 4.5: the attention mixer with one static CMS level reproduces LlamaForCausalLM."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from modeling_hope.convert import llama_to_hope


def random_llama(cls=LlamaForCausalLM, config_cls=LlamaConfig, **overrides):
    kwargs = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = cls(config_cls(**kwargs)).eval()
    with torch.no_grad():  # norms away from 1 so that a misplaced norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_attention_mixer_reproduces_llama(tied):
    llama = random_llama(tie_word_embeddings=tied)
    hope = llama_to_hope(llama)
    ids = torch.randint(3, 97, (3, 17), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    with torch.no_grad():
        assert (hope(ids).logits - llama(ids).logits).abs().max() <= 1e-5
        ref = llama(ids, attention_mask=mask).logits
        out = hope(ids, attention_mask=mask).logits
    assert (out[mask.bool()] - ref[mask.bool()]).abs().max() <= 1e-5
    a = hope.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    b = llama.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_mistral_without_sliding_window():
    mistral = random_llama(MistralForCausalLM, MistralConfig, sliding_window=None)
    hope = llama_to_hope(mistral)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hope(ids).logits - mistral(ids).logits).abs().max() <= 1e-5


def test_refuses_sliding_window():
    mistral = random_llama(MistralForCausalLM, MistralConfig, sliding_window=8)
    with pytest.raises(ValueError, match="sliding"):
        llama_to_hope(mistral)
