"""The LM head and loss of HopeForCausalLM: the rounds' logits kept for the output (`HeadLogits`) and the loss that
keeps no log-softmax copy (`causal_lm_loss`) give the values and gradients of a plain head and cross-entropy."""

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from conftest import build, tiny_config
from modeling_hope.lm_head import HeadCrossEntropy, causal_lm_loss

IN_CONTEXT = [{"intermediate_size": 16}, {"intermediate_size": 8, "period": 5, "lr": 0.1}]


def _plain_loss(logits, labels, vocab_size, num_items_in_batch=None, **kwargs):
    """Cross-entropy on the shifted labels, in the logits' dtype (float64 here), by torch's own function."""
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab_size), labels[:, 1:].reshape(-1), reduction=reduction)
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def _run(model, ids, labels, shared: bool, **kwargs):
    if shared:
        model.__dict__.pop("_loss_function", None)
    else:  # a slice for logits_to_keep: every position, through the final norm and the head
        model.loss_function = _plain_loss
    out = model(ids, labels=labels, logits_to_keep=0 if shared else slice(None), **kwargs)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.loss.detach(), out.logits.detach(), grads


@pytest.mark.parametrize("num_items", [None, 7])
@pytest.mark.parametrize("tied,length", [(False, 13), (True, 10), (False, 11)])
def test_round_logits_and_loss_match_a_plain_head(tied, length, num_items):
    """Rounds of 5 positions (the in-context level's period): 13 and 11 leave a last round of 3 and 1 (a one-token
    round has no teach target, so the plain head runs), 10 ends on a boundary."""
    config = tiny_config(cms_levels=IN_CONTEXT, tie_word_embeddings=tied)
    model = build(config, seed=2, dtype=torch.float64).train()
    gen = torch.Generator().manual_seed(length)
    ids = torch.randint(2, config.vocab_size, (2, length), generator=gen)
    labels = ids.clone()
    labels[0, 2:5] = -100
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    shared, plain = (_run(model, ids, labels, flag, **kwargs) for flag in (True, False))
    assert torch.allclose(shared[0], plain[0], atol=1e-12, rtol=0)
    assert torch.allclose(shared[1], plain[1], atol=1e-12, rtol=0)
    for name, g in plain[2].items():
        assert torch.allclose(shared[2][name], g, atol=1e-12, rtol=0), name
    assert all(g.abs().max() > 0 for name, g in plain[2].items() if "lm_head" in name or "embed" in name)


def test_rounds_write_the_logits_without_a_second_head():
    """In training the head runs once per round (and on each round's pending last position), not again over the
    whole sequence."""
    config = tiny_config(cms_levels=IN_CONTEXT)
    model = build(config, seed=3).train()
    calls = []
    model.lm_head.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    ids = torch.randint(2, config.vocab_size, (1, 15), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    assert [n for n in calls if n > 1] == [5, 5, 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_lm_loss_matches_transformers(dtype):
    """Same value and gradient as transformers' ForCausalLMLoss (which upcasts to float32), with ignored labels,
    num_items_in_batch and explicit shift_labels."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 6, 11, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, 11, (3, 6), generator=gen)
    labels[1, :4] = -100
    for kwargs in ({}, {"num_items_in_batch": torch.tensor(9)}, {"shift_labels": labels.roll(-2, 1)}):
        results = []
        for fn in (causal_lm_loss, ForCausalLMLoss):
            leaf = logits.clone().requires_grad_()
            loss = fn(leaf, labels, 11, **kwargs)
            loss.backward()
            results.append((loss.detach(), leaf.grad))
        (loss, grad), (ref_loss, ref_grad) = results
        assert loss.dtype == ref_loss.dtype == torch.float32 and grad.dtype == dtype
        assert torch.allclose(loss, ref_loss, atol=1e-6, rtol=0), kwargs
        assert torch.allclose(grad.float(), ref_grad.float(), atol=1e-7 if dtype == torch.float32 else 1e-2), kwargs


def test_causal_lm_loss_of_only_ignored_labels_is_nan_like_transformers():
    logits = torch.randn(1, 4, 5)
    labels = torch.full((1, 4), -100)
    assert torch.isnan(causal_lm_loss(logits, labels, 5)) and torch.isnan(ForCausalLMLoss(logits, labels, 5))


def test_a_loss_function_set_by_the_user_is_used():
    config = tiny_config(cms_levels=IN_CONTEXT)
    model = build(config, seed=4).train()
    seen = []
    model.loss_function = lambda logits, labels, vocab_size, **kwargs: seen.append(kwargs) or logits.sum() * 0
    ids = torch.randint(2, config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids)
    assert seen == [{}]  # the rounds' log-sum-exp goes only to causal_lm_loss


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.bfloat16, 2e-2)])
def test_head_cross_entropy_in_blocks_matches_head_then_loss(monkeypatch, dtype, tol):
    """The loss differentiated through the head in blocks of rows (4 rows per block here, so 3 blocks and a short
    one) gives the gradients of y W^T followed by transformers' loss, with ignored labels and num_items_in_batch."""
    monkeypatch.setattr(HeadCrossEntropy, "BLOCK_ELEMENTS", 4 * 11)
    gen = torch.Generator().manual_seed(1)
    y0, w0 = torch.randn(2, 7, 5, generator=gen).to(dtype), torch.randn(11, 5, generator=gen).to(dtype)
    labels = torch.randint(0, 11, (2, 7), generator=gen)
    labels[0, 1:3] = -100
    for kwargs in ({}, {"num_items_in_batch": torch.tensor(9)}):
        results = []
        for fused in (True, False):
            y, w = y0.clone().requires_grad_(), w0.clone().requires_grad_()
            logits = y @ w.T
            if fused:
                loss = causal_lm_loss(logits.detach(), labels, 11, head=(y, w), **kwargs)
            else:  # cross-entropy in float32 at least, as transformers' loss
                loss = _plain_loss(logits.to(torch.promote_types(dtype, torch.float32)), labels, 11, **kwargs)
            loss.backward()
            results.append((loss.detach(), y.grad, w.grad))
        for got, ref in zip(*results):
            assert got.dtype == ref.dtype
            assert torch.allclose(got.double(), ref.double(), atol=tol, rtol=tol), kwargs


def test_loss_and_logits_both_in_the_backward():
    """The output logits keep their own graph: a loss that also uses them gets both gradients."""
    config = tiny_config(cms_levels=IN_CONTEXT)
    model = build(config, seed=5, dtype=torch.float64).train()
    ids = torch.randint(2, config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(0))
    grads = []
    for shared in (True, False):
        model.__dict__.pop("_loss_function", None)
        if not shared:
            model.loss_function = _plain_loss
        out = model(ids, labels=ids, logits_to_keep=0 if shared else slice(None))
        (out.loss + out.logits.square().mean()).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    for name, g in grads[1].items():
        assert torch.allclose(grads[0][name], g, atol=1e-12, rtol=0), name


def test_static_levels_loss_through_the_head_matches_a_plain_head():
    """Without in-context levels the head runs on the final hidden states, and the loss still goes through it."""
    config = tiny_config()
    assert not config.in_context_levels
    model = build(config, seed=6, dtype=torch.float64).train()
    ids = torch.randint(2, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    shared, plain = (_run(model, ids, ids, flag) for flag in (True, False))
    assert torch.allclose(shared[0], plain[0], atol=1e-12, rtol=0)
    for name, g in plain[2].items():
        assert torch.allclose(shared[2][name], g, atol=1e-12, rtol=0), name


@pytest.mark.parametrize("labels_of", ["shifted", "random"])
def test_loss_reuses_the_rounds_products_and_matches_a_plain_head(monkeypatch, labels_of):
    """With labels that are the input ids, the loss's backward forms only each round's last position (whose target
    comes with the next round) and takes the rounds' products for the rest; labels that are not the next tokens
    (here: random, or the ids shifted by one more) are formed, and the products of their teach targets removed.
    Gradients equal a plain head's either way."""
    import modeling_hope.lm_head as lm_head

    config = tiny_config(cms_levels=IN_CONTEXT)
    model = build(config, seed=7, dtype=torch.float64).train()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(2, config.vocab_size, (2, 12), generator=gen)
    labels = torch.randint(2, config.vocab_size, (2, 12), generator=gen) if labels_of == "random" else ids.roll(-1, 1)
    formed = []
    original = lm_head._logits_grad
    monkeypatch.setattr(lm_head, "_logits_grad", lambda logits, *a: formed.append(len(logits)) or original(logits, *a))
    for same in (True, False):  # the ids themselves as labels: only the rounds' last positions are formed
        formed.clear()
        shared, plain = (_run(model, ids, ids if same else labels, flag) for flag in (True, False))
        assert torch.allclose(shared[0], plain[0], atol=1e-12, rtol=0)
        for name, g in plain[2].items():
            assert torch.allclose(shared[2][name], g, atol=1e-12, rtol=0), name
        if same:  # rounds of 5: positions 4 and 9 per row (11 has no label)
            assert sum(formed) == 2 * 2
        else:  # every labelled position formed, and every position with a teach target removed
            assert sum(formed) == 2 * 11 + 2 * 9
