"""Judges: who says which of two responses is better, or how good one response is.

Three kinds behind one interface (:class:`Judge`):

- a reward function (``math_correct``, ``file.py:function``), named as the RL recipes' rewards are;
- a reward model (``model:runs/reward-tiny/final``), a reward run's score head;
- an LLM judge (``llm:<model>``: a hub id, a directory, an adapter run's final/, or an embedded model), prompted
  through its chat template with an editable rubric (:mod:`tunekit.judges.rubric`). Its verdict is read from its
  probabilities over the allowed answers (:mod:`tunekit.judges.verdict`), never parsed from free text.

``score(prompts, completions, columns)`` gives one number per completion (pointwise); ``compare(prompts, first,
second, columns)`` gives a :class:`PairVerdict`. Scoring judges compare by their scores; a pairwise LLM judge asks
each pair in both orders (``both_orders``) to cancel its position bias and reports whether the orders agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class PairVerdict:
    """A judge's verdicts on N pairs (first, second)."""

    prob_first: torch.Tensor  # [N] P(first is better), averaged over both orders where both were asked
    margin: torch.Tensor  # [N] how far first is ahead: score difference, or 2 * prob_first - 1 for a pairwise judge
    consistent: torch.Tensor  # [N] bool: both orders picked the same winner (True where there is no order to swap)
    first_score: torch.Tensor | None = None  # [N] pointwise judges: each side's score
    second_score: torch.Tensor | None = None


class Judge(Protocol):
    name: str

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> torch.Tensor:
        """[N] one score per completion (higher is better)."""
        ...

    def compare(
        self, prompts: list[str], first: list[str], second: list[str], columns: dict[str, list[Any]]
    ) -> PairVerdict: ...


def verdict_from_scores(first: torch.Tensor, second: torch.Tensor) -> PairVerdict:
    """A scoring judge's verdict on pairs: P(first better) = sigmoid(score difference), the Bradley-Terry reading
    of a reward model's scores; no order to swap, so every verdict is consistent."""
    margin = (first - second).float()
    return PairVerdict(torch.sigmoid(margin), margin, torch.ones_like(margin, dtype=torch.bool), first, second)
