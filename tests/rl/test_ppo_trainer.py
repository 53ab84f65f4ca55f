"""PPOTrainer's state between steps and its minibatches, without a model (the hooks that need one run in
tests/recipes/test_ppo.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tunekit.losses.policy import count_units
from tunekit.rl.ppo import KLControlConfig, KLController, PPOLossConfig, PPOTrainer
from tunekit.rl.rollout import SamplingConfig


def trainer(**loss: Any) -> PPOTrainer:
    # Neither the state nor select touches the tokenizer, roles or sample log.
    return PPOTrainer(
        PPOLossConfig(**loss),
        SamplingConfig(num_generations=1),
        seed=3,
        eval_batch_size=2,
        tokenizer=None,
        roles=None,  # type: ignore[arg-type]
        reward_sources=[],
        samples=None,  # type: ignore[arg-type]
    )


def experience(rows: int = 6) -> list[dict[str, Any]]:
    labels = torch.full((rows, 5), -100)
    for row in range(rows):
        labels[row, 1 : 2 + row % 4] = 7  # 1 to 4 completion tokens
    return [{"input_ids": torch.arange(rows * 5).view(rows, 5), "labels": labels, "metrics": {"reward": 1.0}}]


def test_a_fresh_trainer_starts_from_the_config_and_its_state_round_trips():
    fresh = trainer(kl=KLControlConfig(coef=0.3))
    assert fresh.state_dict() == {"kl_coef": 0.3, "rollout_step": -1, "stopped_early": False, "last_approx_kl": 0.0}
    saved = {"kl_coef": 0.25, "rollout_step": 8, "stopped_early": True, "last_approx_kl": 0.5}
    resumed = trainer()
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved and resumed.kl.coef == 0.25


def test_minibatches_cover_the_rows_once_per_epoch_and_repeat_after_a_resume():
    ppo = trainer(epochs=2, minibatches=3)
    ppo.rollout_step = 4
    prepared = experience()
    passes = [ppo.select(prepared, k)[0] for k in range(6)]
    for epoch in (0, 1):
        rows = torch.cat([p["input_ids"][:, 0] for p in passes[3 * epoch : 3 * epoch + 3]])
        assert sorted(rows.tolist()) == [0, 5, 10, 15, 20, 25]
    for minibatch in passes:
        assert minibatch["num_items"] == count_units(minibatch["labels"][:, 1:] != -100, "token")
    # A trainer restored from the state a checkpoint holds deals out the same minibatches.
    resumed = trainer(epochs=2, minibatches=3)
    resumed.load_state_dict(ppo.state_dict())
    for k in range(6):
        assert torch.equal(resumed.select(prepared, k)[0]["input_ids"], passes[k]["input_ids"])


def test_early_stop_on_approximate_kl_skips_the_rest_of_the_batch_and_is_remembered():
    ppo = trainer(epochs=1, minibatches=3, target_approx_kl=0.1)
    prepared = experience()
    ppo.last_approx_kl = 0.5
    assert ppo.select(prepared, 0)  # the first pass of a batch always trains
    assert ppo.select(prepared, 1) == [] and ppo.state_dict()["stopped_early"] is True
    ppo.last_approx_kl = 0.0
    assert ppo.select(prepared, 2) == []


def test_the_kl_controller_follows_the_pure_update_rule():
    controller = KLController(KLControlConfig(coef=0.1, target=2.0, horizon=100))
    controller.update(kl_per_completion=4.0, completions=10)
    assert controller.coef == pytest.approx(0.102)
    fixed = KLController(KLControlConfig(coef=0.1, adaptive=False))
    fixed.update(50.0, 10)
    assert fixed.coef == 0.1


def test_configs_refuse_values_that_cannot_run():
    with pytest.raises(ValueError, match="minibatches must be at least 1"):
        PPOLossConfig(minibatches=0)
    with pytest.raises(ValueError, match="target must be positive"):
        KLControlConfig(target=0.0)
