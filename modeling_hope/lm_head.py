"""The LM head's logits when they were computed already, and the causal-LM loss of transformers' `ForCausalLMLoss`
(labels shifted inside, `ignore_index` skipped, the mean over labelled positions, or the sum / `num_items_in_batch`)
as one autograd node that keeps the logits and their log-sum-exp, not a log-softmax copy of the logits (268 MB at
8192 tokens of an 8192-word vocabulary):

    loss = sum_t (lse_t - x_t[y_t]) / n,        d loss / d x_t = (softmax(x_t) - onehot(y_t)) / n.

HOPE's in-context levels apply the LM head to every round of positions for their teach signal; in training the
rounds' logits and log-sum-exp are kept (`RoundLogits`, `HeadLogits`) instead of a second head and softmax over the
whole sequence. Given the head's input y and weight W, the loss's backward goes straight to them (`HeadCrossEntropy`)
in blocks of rows, dy = d W and dW = d^T y with d = d loss / d logits, so that d is never held for all positions at
once (another 268 MB at 8192 tokens).
"""

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable


class HeadLogits(torch.autograd.Function):
    """logits = y W^T, whose value (computed without autograd, round by round) is given: the backward of the
    linear layer, dy = g W and dW = g^T y, without its forward."""

    @staticmethod
    def forward(ctx, y, weight, logits):
        ctx.save_for_backward(y, weight)
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        return grad @ weight, grad.flatten(0, -2).mT @ y.flatten(0, -2), None


class TeachProducts(NamedTuple):
    """What the rounds' teach signal computed that the loss's backward needs: with d_t = softmax(logits_t) -
    onehot(target_t) (zero where target_t = -100), `dy` = d W (B, L, d) and `dW` = sum_t d_t^T y_t (V, d), and the
    targets (B, L). For positions whose loss label is their teach target, the loss gradient at y and W is these,
    scaled (`HeadCrossEntropy`)."""

    dy: torch.Tensor
    dW: torch.Tensor
    targets: torch.Tensor


class RoundLogits:
    """The logits of consecutive rounds of positions written into one (B, length, V) tensor, with the rounds' norm
    outputs y (for the head's backward), log-sum-exp (for the loss) and teach-signal products (`TeachProducts`)."""

    def __init__(self, length: int):
        self.length, self.logits, self.y, self.lse, self.dy, self.targets, self.dW = length, None, [], [], [], [], None

    @property
    def filled(self) -> int:
        return sum(y.shape[1] for y in self.y)

    @torch.compiler.disable  # bookkeeping: in a compiled model a graph per round count would be recompiled
    def add(self, y, logits, lse, teach: TeachProducts | None):
        if self.logits is None:
            self.logits = logits.new_empty(logits.shape[0], self.length, logits.shape[2])
        start = self.filled
        self.logits[:, start:start + logits.shape[1]] = logits
        self.y.append(y)
        self.lse.append(lse)
        if teach is not None:
            self.dy.append(teach.dy)
            self.targets.append(teach.targets)
            self.dW = teach.dW if self.dW is None else self.dW.add_(teach.dW)

    def output(self, weight):
        """(logits, lse, y, TeachProducts) of all positions once the rounds covered them, else None. The logits
        carry the head's backward (`HeadLogits`) when grad is on."""
        if not self.y or self.filled != self.length:
            return None
        logits, y = self.logits, torch.cat(self.y, 1)
        if torch.is_grad_enabled():
            logits = HeadLogits.apply(y, weight, logits)
        teach = None
        if len(self.dy) == len(self.y):  # every round formed its products
            teach = TeachProducts(torch.cat(self.dy, 1), self.dW, torch.cat(self.targets, 1))
        return logits, torch.cat(self.lse, 1), y, teach


class LogitsCrossEntropy(torch.autograd.Function):
    """logits (n, V), labels (n,) with ignored entries already masked out by `valid` (n,), lse (n,) float32 (or
    float64 logits' dtype), denominator a 0-dim tensor."""

    @staticmethod
    def forward(ctx, logits, labels, valid, lse, denominator):
        ctx.save_for_backward(logits, labels, valid, lse, denominator)
        return _loss(logits, labels, valid, lse, denominator)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        logits, labels, valid, lse, denominator = ctx.saved_tensors
        return _logits_grad(logits, labels, lse, torch.where(valid, grad / denominator, 0)), None, None, None, None


def _loss(logits, labels, valid, lse, denominator):
    picked = logits.to(lse.dtype).gather(-1, labels[:, None])[:, 0]
    return torch.where(valid, lse - picked, 0).sum() / denominator


def _logits_grad(logits, labels, lse, scale):
    """(softmax(logits) - onehot(labels)) * scale[:, None], in the logits' dtype; logits (n, V)."""
    d = torch.sub(logits.to(lse.dtype), lse[:, None]).exp_()
    d.scatter_add_(-1, labels[:, None], torch.full_like(d[:, :1], -1))
    return d.mul_(scale[:, None]).to(logits.dtype)


class HeadCrossEntropy(torch.autograd.Function):
    """`LogitsCrossEntropy` of logits = y W^T (their value given), differentiated with respect to y (n, d) and W
    (V, d): the loss gradient at the logits is formed `BLOCK_ELEMENTS` at a time and goes through the head at once.
    With the rounds' `TeachProducts` (flattened to n rows), the positions whose label is their teach target take
    the scaled products instead (the loss gradient there is d_t / denominator), and only the others are formed here:
    a round's last position (its target comes with the next round) and labels that differ from the next token."""

    BLOCK_ELEMENTS = 1 << 23  # 32 MiB of float32 gradient per block

    @staticmethod
    def forward(ctx, y, weight, logits, labels, valid, lse, denominator, teach_dy, teach_dw, teach_targets):
        ctx.save_for_backward(y, weight, logits, labels, valid, lse, denominator, teach_dy, teach_dw, teach_targets)
        return _loss(logits, labels, valid, lse, denominator)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y, weight, logits, labels, valid, lse, denominator, teach_dy, teach_dw, targets = ctx.saved_tensors
        scale = grad / denominator
        acc = torch.promote_types(weight.dtype, torch.float32)  # float32 sums across blocks and rows
        if teach_dy.numel():
            matched = valid & (targets == labels)
            g_y = (teach_dy.to(acc) * torch.where(matched, scale, 0)[:, None]).to(y.dtype)
            g_w = teach_dw.to(acc) * scale
            # the products count positions that must not (a teach target, but no label or another label)
            remove = ((targets != -100) & ~matched).nonzero()[:, 0]
        else:
            matched = torch.zeros_like(valid)
            g_y = torch.zeros_like(y)
            g_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            remove = matched.nonzero()[:, 0]
        block = max(1, HeadCrossEntropy.BLOCK_ELEMENTS // logits.shape[-1])
        for part in (valid & ~matched).nonzero()[:, 0].split(block):  # labelled rows the products miss
            d = _logits_grad(logits[part], labels[part], lse[part], scale.expand(len(part))).to(weight.dtype)
            g_y.index_add_(0, part, (d @ weight).to(y.dtype))
            g_w.add_(d.mT @ y[part].to(weight.dtype))
        for part in remove.split(block):
            d = _logits_grad(logits[part], targets[part], lse[part], -scale.expand(len(part))).to(weight.dtype)
            g_w.add_(d.mT @ y[part].to(weight.dtype))
        return g_y, g_w.to(weight.dtype), None, None, None, None, None, None, None, None


def causal_lm_loss(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                   shift_labels=None, lse=None, head=None, **kwargs):
    """Drop-in for `transformers.loss.loss_utils.ForCausalLMLoss` (same arguments, same value); `lse` (B, L) is the
    log-sum-exp of `logits` over the vocabulary in float32 when the caller has it. With `head` = (y, W), the logits
    are y W^T (y (B, L, d)) and the loss differentiates y and W directly (`HeadCrossEntropy`), not the logits; a
    third entry, the rounds' `TeachProducts`, lets it reuse their products."""
    if shift_labels is None:  # tokens < n predict n
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    x = logits.reshape(-1, vocab_size)
    y = shift_labels.reshape(-1).to(x.device)
    dtype = torch.promote_types(x.dtype, torch.float32)
    lse = torch.logsumexp(x.detach().to(dtype), -1) if lse is None else lse.reshape(-1).to(dtype)  # no grad: unused
    valid = y != ignore_index
    if num_items_in_batch is None:
        denominator = valid.sum().to(dtype)
    else:
        denominator = torch.as_tensor(num_items_in_batch, device=x.device).to(dtype)
    if head is None:
        return LogitsCrossEntropy.apply(x, torch.where(valid, y, 0), valid, lse, denominator)
    hidden, weight, *teach = head
    if teach and teach[0] is not None and teach[0].targets.shape == shift_labels.shape:
        dy, dw, targets = teach[0].dy.reshape(-1, hidden.shape[-1]), teach[0].dW, teach[0].targets.reshape(-1).to(y)
    else:
        dy, dw, targets = hidden.new_empty(0), weight.new_empty(0), y.new_empty(0)
    return HeadCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, x.detach(), torch.where(valid, y, 0),
                                  valid, lse, denominator, dy, dw, targets)
