"""Reading a judge's verdict from its probabilities, and combining verdicts: pure tensor functions.

An LLM judge is never asked to write its verdict freely and then parsed: its next-token distribution after a
verdict prefix ("Verdict: ") is read at the first token of each allowed answer ("A", "B"; or "1" ... "5"), and
renormalised over those answers. Every call therefore yields a verdict, with a probability on it.
"""

from __future__ import annotations

import torch


def choice_probs(logits: torch.Tensor, choice_ids: torch.Tensor) -> torch.Tensor:
    """[N, V] next-token logits, [C] the first token of each allowed answer -> [N, C] the answers' probabilities
    renormalised over the C answers (in fp32): what the judge says when it may say nothing else."""
    return torch.softmax(logits.float().index_select(-1, choice_ids), dim=-1)


def expected_score(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[N, C] answer probabilities, [C] the score each answer stands for -> [N] the expected score."""
    return probs @ values.to(probs)


def combine_orders(first_in_order: torch.Tensor, first_when_swapped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position bias: a pair judged as (a, b) and again as (b, a).

    ``first_in_order`` [N]: P(a is better) asked with a shown first; ``first_when_swapped`` [N]: P(b is better)
    asked with b shown first. Returns ``(p [N], consistent [N] bool)``: P(a is better) averaged over the two orders,
    and whether both orders pick the same winner (a judge that always picks the first position is never consistent).
    """
    a_when_swapped = 1 - first_when_swapped
    consistent = (first_in_order > 0.5) == (a_when_swapped > 0.5)
    return (first_in_order + a_when_swapped) / 2, consistent


def cohen_kappa(a: torch.Tensor, b: torch.Tensor) -> float:
    """Agreement of two labellings [N] (integer classes) beyond chance: (p_o - p_e) / (1 - p_e); 1 when they agree
    everywhere, 0 at chance. Defined as 1 when chance agreement is already total (both give one class throughout)."""
    if a.numel() == 0:
        return float("nan")
    classes = torch.cat([a, b]).unique()
    observed = (a == b).float().mean()
    expected = sum((a == c).float().mean() * (b == c).float().mean() for c in classes)
    if float(expected) >= 1.0:
        return 1.0
    return float((observed - expected) / (1 - expected))
