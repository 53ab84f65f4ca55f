"""Reductions shared by the losses: masked sums and means, whitening, and log-probs of chosen tokens."""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true (mask broadcastable to values)."""
    values = values * mask
    return values.sum() if dim is None else values.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true; 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``values`` to unit variance (and zero mean if ``shift_mean``) over the masked positions."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


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
    """log softmax(logits)[k, targets[k]] for logits taken at label positions only: [K, V], [K] -> [K] (fp32).

    ``chunk_size`` rows at a time in fp32, as logit[target] - logsumexp(logits): a bf16 model's logits are
    upcast one chunk at a time, and autograd keeps no log-softmax copy of them.
    """
    out = []
    for start in range(0, targets.numel(), chunk_size):
        chunk = logits[start : start + chunk_size].float()
        picked = chunk.gather(-1, targets[start : start + chunk_size, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(chunk, dim=-1))
    # No label at all (e.g. every completion masked): an empty result still tied to the graph, so that a loss
    # built from it can be backpropagated like any other.
    return torch.cat(out) if out else logits.float().sum(-1)
