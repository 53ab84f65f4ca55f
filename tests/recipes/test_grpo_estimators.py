"""The GRPO recipe with REINFORCE++ advantages and GSPO's sequence-level ratio, end to end on the tiny model, and
its estimator keys checked (issue 31); the estimators' numbers are tested in tests/losses/test_estimators.py."""

import math

import pytest
import torch

from tunekit.config import load_config
from tunekit.errors import ConfigError
from tunekit.recipes.grpo import GRPOConfig, run
from tunekit.rl.grpo import GRPOTrainer

FAST = [
    "model.path=tiny-llama",
    "model.adapter.method=lora",
    "train.progress=false",
    "data.synthetic_size=16",
    "data.eval_fraction=0",
    "train.micro_batch_size=2",
    "sampling.num_generations=4",
    "sampling.max_new_tokens=6",
    "loss.kl_beta=0.05",
    "loss.passes=2",
    # A reward that varies on an untrained model's completions, so that the advantages are not all 0.
    "rewards=[{name: length_penalty, kwargs: {target_chars: 12}}]",
]


def grpo_config(out, *overrides):
    return load_config(GRPOConfig, None, [f"output_dir={out}", *FAST, *overrides])


def test_reinforce_pp_with_a_sequence_ratio_trains_with_the_kl_in_the_reward(tmp_path, monkeypatch):
    """REINFORCE++ advantages (KL in the reward, normalised over the whole step) under GSPO's sequence ratio, two
    micro-batches a step and two passes over each rollout. (RLOO's prepare branch runs in the docs/results.md runs;
    its numbers are tested against TRL in tests/losses/test_estimators.py.)"""
    seen = []
    prepare = GRPOTrainer.prepare

    def recording(self, model, batches, step):
        prepared = prepare(self, model, batches, step)
        seen.append([(b["advantages"].clone(), b["labels"][:, 1:] != -100) for b in prepared])
        return prepared

    monkeypatch.setattr(GRPOTrainer, "prepare", recording)
    overrides = ["loss.advantage=reinforce_pp", "loss.importance_sampling_level=sequence", "max_steps=2"]
    result = run(grpo_config(tmp_path / "grpo", *overrides, "train.grad_accum_steps=2"))
    assert result.step == 2
    lines = [r for r in result.history if "loss" in r]
    assert all(math.isfinite(r["loss"]) for r in lines)
    # The KL is in the reward, not the loss, but is still measured.
    assert all("kl" in r and "clip_fraction" in r for r in lines)
    assert len(seen) == 1 and len(seen[0]) == 2  # 2 steps of 2 passes on one rollout batch; 2 micro-batches
    # Per-token advantages, whitened over both micro-batches of the step together (not each on its own).
    step = seen[0]
    assert all(a.shape == m.shape for a, m in step)
    valid = torch.cat([a[m] for a, m in step])
    assert abs(valid.mean().item()) < 1e-5 and abs(valid.std(correction=0).item() - 1) < 1e-3
    # Normalised one micro-batch at a time, each would have mean 0 on its own.
    assert max(abs(a[m].mean().item()) for a, m in step) > 1e-3


def test_scale_rewards_is_refused_for_estimators_that_ignore_it(tmp_path):
    with pytest.raises(ConfigError, match="loss.scale_rewards is used only by advantage=group"):
        grpo_config(tmp_path / "grpo", "loss.advantage=rloo", "loss.scale_rewards=false")
