"""Reductions shared by the losses: masked sums and means, whitening, and log-probs of chosen tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true (mask broadcastable to values)."""
    values = values * mask
    return values.sum() if dim is None else values.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true; 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalise ``values`` to unit variance (and zero mean if ``shift_mean``) over the masked positions.

    values, mask: [...] (mask broadcastable) -> [...]; masked-out positions are shifted and scaled like the rest
    (multiply by the mask to zero them). ``sum_across`` sums the statistics over the data held elsewhere, e.g.
    every process's share (:func:`tunekit.train.engines.all_reduce_sum`); without it the statistics are this
    tensor's alone. The variance is the mean squared deviation from the (global) mean, two passes rather than
    E[x^2] - mean^2, which cancels catastrophically when the mean is large against the spread.
    """
    total = sum_across if sum_across is not None else _identity
    m = mask.to(values.dtype)
    sums = total(torch.stack([masked_sum(values, m), m.sum()]))
    count = sums[1].clamp(min=1)
    mean = sums[0] / count
    var = total(masked_sum((values - mean) ** 2, m)) / count
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[..., index] without materialising the full [..., V] log-softmax.

    logits: [..., V]; index: [...] (int64) -> [...]. Computed as logit[index] - logsumexp(logits), one row
    block at a time, so the extra memory is one row block's logsumexp, not a copy of the logits.
    """
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    # logsumexp in half precision loses too much; go through fp32 one row at a time instead.
    out = []
    for row_logits, row_index in zip(logits, index, strict=True):
        row = torch.log_softmax(row_logits.float(), dim=-1)
        out.append(torch.gather(row, -1, row_index.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out)


def label_log_softmax(logits: torch.Tensor, targets: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """log softmax(logits)[k, targets[k]] for logits taken at label positions only: [K, V], [K] -> [K] (fp32, or
    fp64 for fp64 logits).

    ``chunk_size`` rows at a time, a half-precision model's logits upcast one chunk at a time. Autograd keeps only
    the logits themselves (no log-softmax copy), and the backward is one softmax per chunk: the [K, V] gradient
    ``g * (onehot - softmax)`` is written once, where autograd's own graph of gather and logsumexp would make
    several [K, V] passes (zero fills, a subtraction, an exponential, a sum of two gradients).
    """
    if targets.numel() == 0:
        # No label at all (e.g. every completion masked): an empty result still tied to the graph, so that a loss
        # built from it can be backpropagated like any other.
        return _upcast(logits).sum(-1)
    return _LabelLogSoftmax.apply(logits, targets, chunk_size)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class _LabelLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
        ctx.save_for_backward(logits, targets)
        ctx.chunk_size = chunk_size
        out = []
        for start in range(0, targets.numel(), chunk_size):
            chunk = _upcast(logits[start : start + chunk_size])
            picked = torch.log_softmax(chunk, dim=-1).gather(-1, targets[start : start + chunk_size, None])
            out.append(picked.squeeze(-1))
        return out[0] if len(out) == 1 else torch.cat(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets = ctx.saved_tensors
        pieces = []
        for start in range(0, targets.numel(), ctx.chunk_size):
            end = start + ctx.chunk_size
            g = grad[start:end, None]
            piece = torch.softmax(_upcast(logits[start:end]), dim=-1).mul_(-g)
            piece.scatter_add_(-1, targets[start:end, None], g)
            pieces.append(piece.to(logits.dtype))
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), None, None
