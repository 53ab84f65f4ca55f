"""Choosing each next token of a rollout from the logits: temperature, top-k and nucleus sampling, or greedy.

Used by tunekit's own decoding loop (:mod:`tunekit.fast.decode`); the draw matches the distribution that
``transformers``' logits warpers define (tests/fast/test_decode.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sampler:
    """How the next token is chosen from the logits: the fields of :class:`~tunekit.rl.rollout.SamplingConfig`."""

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1.0: no nucleus cut

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, V] logits -> [N] token ids."""
        if self.temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(dim=-1)
        if self.top_p >= 1.0:
            return _inverse_cdf(probs)
        # Keep the most likely tokens up to and including the one whose cumulative probability reaches top_p.
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= self.top_p, 0.0)
        return order.gather(-1, _inverse_cdf(sorted_probs)[:, None])[:, 0]


def _inverse_cdf(probs: torch.Tensor) -> torch.Tensor:
    """One draw from each row of [N, V] unnormalised probabilities -> [N] indices.

    One uniform number a row against the cumulative sum: ``torch.multinomial`` draws an exponential number for
    every entry instead, which at a vocabulary of 8192 costs more than the rest of sampling together.
    """
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    # right=True skips zero-probability entries: their cumulative value equals the one before them.
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=probs.shape[-1] - 1)
