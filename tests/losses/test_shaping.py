"""RL reward shaping, the adaptive KL coefficient and GRPO's truncation rules, against values derived by hand."""

from __future__ import annotations

import pytest
import torch

from tunekit.losses.shaping import adaptive_kl_coef, grpo_rewards_and_keep, kl_penalized_rewards


def test_kl_penalized_rewards_by_hand():
    # Row 0: three completion tokens, then padding; row 1: one; row 2: none at all.
    scores = torch.tensor([2.0, -1.0, 5.0])
    logps = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.3, -7.0, -7.0, -7.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logps = torch.tensor([[-1.5, -2.0, -1.0, 0.0], [-0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    rewards, kl = kl_penalized_rewards(scores, logps, ref_logps, mask, kl_coef=0.1)
    # kl = logp - ref on completion tokens: row 0 (0.5, 0, 0.5), row 1 (-0.2); 0 elsewhere.
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.5, 0.0], [-0.2, 0.0, 0.0, 0.0], [0.0] * 4]), atol=1e-7)
    # rewards = -0.1 * kl, plus the score at the last completion token (row 2, with none, at position 0).
    expected = torch.tensor([[-0.05, 0.0, -0.05 + 2.0, 0.0], [0.02 - 1.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-7)


def test_adaptive_kl_coef_by_hand():
    # KL 4 against target 2: relative error +1, clipped to +0.2; 10 completions of a horizon of 100.
    assert adaptive_kl_coef(0.1, kl=4.0, target=2.0, horizon=100, completions=10) == pytest.approx(0.1 * 1.02)
    # KL 1.8: error -0.1, inside the clip: the coefficient falls by 0.1 x 10 / 100.
    assert adaptive_kl_coef(0.1, kl=1.8, target=2.0, horizon=100, completions=10) == pytest.approx(0.1 * 0.99)
    # On target: unchanged. A batch as large as the horizon moves it by the whole clipped error.
    assert adaptive_kl_coef(0.1, kl=2.0, target=2.0, horizon=100, completions=10) == 0.1
    assert adaptive_kl_coef(0.1, kl=0.0, target=2.0, horizon=50, completions=50) == pytest.approx(0.1 * 0.8)


# Three prompts, two completions each: rewards (1, 1), (0, 1), (0, 0); the 2nd and 5th completions were truncated.
REWARDS = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
TRUNCATED = torch.tensor([False, True, False, False, True, False])


def test_grpo_keep_changes_nothing():
    rewards, keep = grpo_rewards_and_keep(REWARDS, TRUNCATED, 2)
    assert torch.equal(rewards, REWARDS) and keep.all()


def test_grpo_penalize_lowers_truncated_rewards_before_groups_are_compared():
    rewards, keep = grpo_rewards_and_keep(REWARDS, TRUNCATED, 2, truncation="penalize", truncation_penalty=-1.0)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0, -1.0, 0.0]
    assert keep.all()
    # With skip_equal_groups the penalised rewards are the ones compared: no group is all equal any more.
    _, keep = grpo_rewards_and_keep(
        REWARDS, TRUNCATED, 2, truncation="penalize", truncation_penalty=-1.0, skip_equal_groups=True
    )
    assert keep.all()


def test_grpo_skip_equal_groups_drops_whole_groups():
    rewards, keep = grpo_rewards_and_keep(REWARDS, TRUNCATED, 2, skip_equal_groups=True)
    assert torch.equal(rewards, REWARDS)
    assert keep.tolist() == [False, False, True, True, False, False]


def test_grpo_mask_keeps_truncated_completions_out_of_the_loss_only():
    rewards, keep = grpo_rewards_and_keep(REWARDS, TRUNCATED, 2, truncation="mask", truncation_penalty=-1.0)
    assert torch.equal(rewards, REWARDS)  # the penalty applies to "penalize" only
    assert keep.tolist() == [True, False, True, True, False, True]
    _, keep = grpo_rewards_and_keep(REWARDS, TRUNCATED, 2, truncation="mask", skip_equal_groups=True)
    assert keep.tolist() == [False, False, True, True, False, False]
