"""Reward functions and reward models as judges: they score, and compare by their scores."""

from __future__ import annotations

from typing import Any

import torch

from tunekit.judges import PairVerdict, verdict_from_scores
from tunekit.rl.reward_calls import compute_rewards
from tunekit.rl.rewards import RewardFn, RewardSource


class ScoringJudge:
    """A reward function or reward model (one :class:`~tunekit.rl.rewards.RewardSource`) as a :class:`Judge`."""

    def __init__(self, source: RewardSource, fn: RewardFn) -> None:
        self.name = source.name
        self._sources = [(source, fn)]

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> torch.Tensor:
        total, _ = compute_rewards(self._sources, prompts, completions, columns)
        return total

    def compare(
        self, prompts: list[str], first: list[str], second: list[str], columns: dict[str, list[Any]]
    ) -> PairVerdict:
        # One call scores both sides, so that a reward model sees them in the same batches.
        both = self.score(prompts * 2, first + second, {k: v * 2 for k, v in columns.items()})
        return verdict_from_scores(both[: len(first)], both[len(first) :])
