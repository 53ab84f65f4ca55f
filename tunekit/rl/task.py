"""The held-out task metric of an RL run: what the training exists to improve, scored beside the reward it optimises.

A reward model's score, or a weighted sum of shaping rewards, can rise while the task gets worse (a policy that
learns to please a weak reward model). So GRPO and PPO evaluations also score every held-out completion with a
*checker*: a reward function used only to measure, never to train. The config key ``task_metric`` names it:

- ``auto`` (the default): ``math_correct`` (exact match of the final number) when every held-out row has an
  ``answer`` column, otherwise no task metric;
- any reward-function name the ``rewards`` list accepts (a built-in, ``file.py:function``, ``pkg.module:function``);
- null: none.

Its mean over held-out completions is logged as ``eval/task/<name>`` (samples at the training temperature) and
``eval/greedy/task/<name>`` (one greedy answer per prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunekit.data.prompts import PromptExample
from tunekit.errors import ConfigError
from tunekit.rl.reward_calls import check_signature, compute_rewards
from tunekit.rl.rewards import REWARD_MODEL_PREFIX, RewardFn, RewardSource, load_reward_function
from tunekit.rl.rollout import Rollout

AUTO = "auto"
EXACT_MATCH = "math_correct"  # the checker ``auto`` picks for rows with an ``answer`` column


@dataclass
class TaskMetric:
    """A named checker; :meth:`score` gives one value per completion of a rollout."""

    name: str
    fn: RewardFn

    @property
    def key(self) -> str:
        """The metric's key without the ``eval/`` or ``eval/greedy/`` prefix."""
        return f"task/{self.name}"

    def score(self, rollout: Rollout) -> torch.Tensor:
        """[N] float32: the checker's value for each of the rollout's N completions."""
        source = RewardSource(name=self.name)
        total, _ = compute_rewards([(source, self.fn)], rollout.prompts, rollout.completions, rollout.columns)
        return total


def load_task_metric(name: str | None, held_out: list[PromptExample]) -> TaskMetric | None:
    """The checker ``name`` stands for (see the module docstring), or None for no task metric.

    ``held_out`` is the run's held-out prompts; ``auto`` looks at their columns. A reward model is refused: the
    point of the metric is a judgement that the policy cannot learn to fool.
    """
    if name is None or not held_out:
        return None
    if name == AUTO:
        if all("answer" in p.columns for p in held_out):
            return TaskMetric(EXACT_MATCH, load_reward_function(EXACT_MATCH))
        return None
    if name.strip().startswith(REWARD_MODEL_PREFIX):
        raise ConfigError(
            f"task_metric {name!r} names a reward model; the task metric must be a checker (a reward function such "
            "as math_correct), since a learned score is what a policy can learn to fool"
        )
    metric = TaskMetric(name, load_reward_function(name))
    check_signature(f"task_metric {name}", metric.fn, list(held_out[0].columns))
    return metric
