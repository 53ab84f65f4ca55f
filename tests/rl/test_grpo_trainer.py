"""GRPOTrainer's state and config checks, without a model (its hooks run in tests/recipes/test_grpo.py)."""

from __future__ import annotations

import pytest

from tunekit.rl.grpo import GRPOLossConfig, GRPOTrainer
from tunekit.rl.rollout import SamplingConfig


def test_passes_must_be_at_least_one():
    with pytest.raises(ValueError, match="passes must be at least 1"):
        GRPOLossConfig(passes=0)


def test_grpo_carries_no_state():
    grpo = GRPOTrainer(
        GRPOLossConfig(),
        SamplingConfig(num_generations=2),
        seed=0,
        eval_batch_size=1,
        tokenizer=None,
        reference=None,
        rewards=[],
        samples=None,  # type: ignore[arg-type]
    )
    assert grpo.state_dict() == {}
    grpo.load_state_dict({})
