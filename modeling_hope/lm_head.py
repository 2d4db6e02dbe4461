"""The LM head's logits when they were computed already, and the causal-LM loss of transformers' `ForCausalLMLoss`
(labels shifted inside, `ignore_index` skipped, the mean over labelled positions, or the sum / `num_items_in_batch`)
as one autograd node that keeps the logits and their log-sum-exp, not a log-softmax copy of the logits (268 MB at
8192 tokens of an 8192-word vocabulary):

    loss = sum_t (lse_t - x_t[y_t]) / n,        d loss / d x_t = (softmax(x_t) - onehot(y_t)) / n.

HOPE's in-context levels apply the LM head to every round of positions for their teach signal; in training the
rounds' logits and log-sum-exp are kept (`RoundLogits`, `HeadLogits`) instead of a second head and softmax over the
whole sequence.
"""

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


class RoundLogits:
    """The logits of consecutive rounds of positions written into one (B, length, V) tensor, with the rounds' norm
    outputs y (for the head's backward) and log-sum-exp (for the loss)."""

    def __init__(self, length: int):
        self.length, self.logits, self.y, self.lse = length, None, [], []

    @property
    def filled(self) -> int:
        return sum(y.shape[1] for y in self.y)

    def add(self, y, logits, lse):
        if self.logits is None:
            self.logits = logits.new_empty(logits.shape[0], self.length, logits.shape[2])
        start = self.filled
        self.logits[:, start:start + logits.shape[1]] = logits
        self.y.append(y)
        self.lse.append(lse)

    def output(self, weight):
        """(logits, lse) of all positions once the rounds covered them, else None. The logits carry the head's
        backward (`HeadLogits`) when grad is on."""
        if not self.y or self.filled != self.length:
            return None
        logits = self.logits
        if torch.is_grad_enabled():
            logits = HeadLogits.apply(torch.cat(self.y, 1), weight, logits)
        return logits, torch.cat(self.lse, 1)


class LogitsCrossEntropy(torch.autograd.Function):
    """logits (n, V), labels (n,) with ignored entries already masked out by `valid` (n,), lse (n,) float32 (or
    float64 logits' dtype), denominator a 0-dim tensor."""

    @staticmethod
    def forward(ctx, logits, labels, valid, lse, denominator):
        x = logits.to(lse.dtype)
        picked = x.gather(-1, labels[:, None])[:, 0]
        ctx.save_for_backward(logits, labels, valid, lse, denominator)
        return torch.where(valid, lse - picked, 0).sum() / denominator

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        logits, labels, valid, lse, denominator = ctx.saved_tensors
        d = torch.sub(logits.to(lse.dtype), lse[:, None]).exp_()
        d.scatter_add_(-1, labels[:, None], torch.full_like(d[:, :1], -1))
        d.mul_(torch.where(valid, grad / denominator, 0)[:, None])
        return d.to(logits.dtype), None, None, None, None


def causal_lm_loss(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                   shift_labels=None, lse=None, **kwargs):
    """Drop-in for `transformers.loss.loss_utils.ForCausalLMLoss` (same arguments, same value); `lse` (B, L) is the
    log-sum-exp of `logits` over the vocabulary in float32 when the caller has it."""
    if shift_labels is None:  # tokens < n predict n
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    x = logits.reshape(-1, vocab_size)
    y = shift_labels.reshape(-1).to(x.device)
    dtype = torch.promote_types(x.dtype, torch.float32)
    lse = torch.logsumexp(x.to(dtype), -1) if lse is None else lse.reshape(-1).to(dtype)
    valid = y != ignore_index
    if num_items_in_batch is None:
        denominator = valid.sum().to(dtype)
    else:
        denominator = torch.as_tensor(num_items_in_batch, device=x.device).to(dtype)
    return LogitsCrossEntropy.apply(x, torch.where(valid, y, 0), valid, lse, denominator)
