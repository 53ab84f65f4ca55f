"""RLOO and REINFORCE++ advantages and GSPO's sequence-level ratio: hand-derived values, and TRL 1.16's RLOOTrainer
and GRPOTrainer on the same tensors (issue 31)."""

import math
import types
from collections import defaultdict

import pytest
import torch

from tests.losses.trl_grpo import trl_grpo_loss
from tunekit.losses.advantages import (
    group_advantages,
    normalize_together,
    reinforce_pp_returns,
    rloo_advantages,
    sequence_kl_penalty,
)
from tunekit.losses.policy import grpo_loss, log_importance_ratio


def test_rloo_advantages_match_hand_derived_values():
    # Group 1 (G = 3): rewards 1, 0, 2. Baselines: (0 + 2) / 2 = 1, (1 + 2) / 2 = 1.5, (1 + 0) / 2 = 0.5.
    # Group 2 is flat: every baseline equals the reward. A group of one has no baseline: 0.
    rewards = torch.tensor([1.0, 0.0, 2.0, 4.0, 4.0, 4.0])
    assert torch.allclose(rloo_advantages(rewards, 3), torch.tensor([0.0, -1.5, 1.5, 0.0, 0.0, 0.0]))
    assert torch.equal(rloo_advantages(torch.tensor([3.0, -1.0]), 1), torch.zeros(2))
    # Equivalently G / (G - 1) times GRPO's centred (unscaled) advantage.
    torch.manual_seed(0)
    many = torch.randn(40)
    expected = 8 / 7 * group_advantages(many, 8, scale_by_std=False)
    assert torch.allclose(rloo_advantages(many, 8), expected, atol=1e-6)
    with pytest.raises(ValueError, match="whole groups"):
        rloo_advantages(torch.zeros(5), 2)


def test_sequence_kl_penalty_sums_k1_over_valid_tokens():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -0.2, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # Row 0: 0.5 + (-1.0), the padded third token left out; row 1: 0.5 - 0.3 - 9.0.
    assert torch.allclose(sequence_kl_penalty(old, ref, mask), torch.tensor([-0.5, -8.8]))


def test_reinforce_pp_returns_match_hand_derived_values():
    # Row 0: 3 valid tokens, score 1, kl 0.1, 0.2, 0.3 with coef 0.5 -> token rewards -0.05, -0.1, -0.15 + 1;
    # returns to go: 0.7, 0.75, 0.85. Row 1: 1 valid token, score -1, kl 0.4 -> -1.2. Row 2: no valid token: zeros.
    rewards = torch.tensor([1.0, -1.0, 5.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    expected = torch.tensor([[0.7, 0.75, 0.85], [-1.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(reinforce_pp_returns(rewards, mask, kl, 0.5), expected, atol=1e-6)
    # Without a KL, every valid token's return is the completion's score.
    plain = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(reinforce_pp_returns(rewards, mask), plain)


def test_normalize_together_is_one_whitening_over_every_micro_batch():
    # Valid entries 1, 3 (batch a) and 5, 7 (batch b): mean 4, population std sqrt(5).
    a, mask_a = torch.tensor([[1.0, 3.0, 99.0]]), torch.tensor([[1, 1, 0]])
    b, mask_b = torch.tensor([[5.0], [7.0]]), torch.tensor([[1], [1]])
    out_a, out_b = normalize_together([a, b], [mask_a, mask_b])
    s = math.sqrt(5.0 + 1e-8)
    assert torch.allclose(out_a, torch.tensor([[-3 / s, -1 / s, 0.0]]))
    assert torch.allclose(out_b, torch.tensor([[1 / s], [3 / s]]))
    # Split differently, the same entries get the same advantages.
    (whole,) = normalize_together([torch.tensor([[1.0, 3.0, 5.0, 7.0]])], [torch.ones(1, 4)])
    assert torch.allclose(whole[0], torch.cat([out_a[0, :2], out_b[:, 0]]))


def test_sequence_ratio_is_the_geometric_mean_of_the_token_ratios():
    old = torch.zeros(2, 3)
    logps = torch.tensor([[math.log(2.0), math.log(8.0), 5.0], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # Row 0: sqrt(2 * 8) = 4, the padded token ignored; row 1 has no valid token: ratio 1.
    ratio = torch.exp(log_importance_ratio(logps, old, mask, "sequence"))
    assert ratio.shape == (2, 1)
    assert torch.allclose(ratio[:, 0], torch.tensor([4.0, 1.0]))
    with pytest.raises(ValueError, match="unknown importance ratio level"):
        log_importance_ratio(logps, old, mask, "document")


def test_sequence_level_clips_whole_completions_by_hand():
    # One completion of two tokens, token ratios 2 and 0.5: geometric mean 1, inside the clip range, so no token is
    # clipped at the sequence level although both are at the token level (A > 0 clips 2; A < 0 would clip 0.5).
    old = torch.zeros(1, 2)
    logps = torch.tensor([[math.log(2.0), math.log(0.5)]])
    mask = torch.ones(1, 2)
    kwargs = {"clip_low": 0.2, "clip_high": 0.28, "aggregation": "sequence"}
    token = grpo_loss(logps, old, torch.tensor([1.0]), mask, **kwargs)
    sequence = grpo_loss(logps, old, torch.tensor([1.0]), mask, ratio_level="sequence", **kwargs)
    assert token.metrics["clip_fraction"].item() == 0.5
    assert sequence.metrics["clip_fraction"].item() == 0.0
    assert math.isclose(sequence.loss_sum.item(), -1.0, rel_tol=1e-6)  # -ratio * A, ratio 1
    assert math.isclose(token.loss_sum.item(), -(1.28 + 0.5) / 2, rel_tol=1e-6)


def test_on_policy_sequence_ratio_gives_grpos_gradient_under_sequence_aggregation():
    """With one pass the ratio is 1 in value; its gradient, A * mean_t grad logp_t, is then what GRPO's
    per-sequence mean gives token by token. GSPO and GRPO differ only off-policy (passes > 1)."""
    torch.manual_seed(1)
    logps = (-torch.rand(4, 5)).requires_grad_()
    mask = (torch.arange(5)[None] < torch.tensor([5, 2, 3, 1])[:, None]).long()
    advantages = torch.randn(4)
    grads = []
    for level in ("token", "sequence"):
        out = grpo_loss(
            logps, logps.detach(), advantages, mask, clip_low=0.2, clip_high=0.28, ratio_level=level,
            aggregation="sequence",
        )  # fmt: skip
        grads.append(torch.autograd.grad(out.loss_sum, logps)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


@pytest.mark.parametrize(("aggregation", "trl_loss_type"), [("sequence", "grpo"), ("token", "dapo")])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_sequence_level_ratio_matches_trl_grpo_trainer(aggregation, trl_loss_type, beta):
    torch.manual_seed(0)
    batch, width = 8, 9
    old_logps = -torch.rand(batch, width) * 3
    ref_logps = old_logps + 0.3 * torch.randn(batch, width)
    advantages = torch.randn(batch)
    mask = (torch.arange(width)[None, :] < torch.tensor([9, 1, 4, 7, 0, 2, 9, 5])[:, None]).long()
    # Sequence ratios spread beyond [0.8, 1.28]: a per-row offset plus token noise.
    ours_logps = (old_logps + 0.3 * torch.randn(batch, 1) + 0.2 * torch.randn(batch, width)).requires_grad_()
    trl_logps = ours_logps.detach().clone().requires_grad_()
    output = grpo_loss(
        ours_logps,
        old_logps,
        advantages,
        mask,
        clip_low=0.2,
        clip_high=0.28,
        ref_logps=ref_logps,
        kl_beta=beta,
        aggregation=aggregation,
        ratio_level="sequence",
    )
    trl_loss, trl_clip, _ = trl_grpo_loss(
        trl_logps, old_logps, ref_logps, advantages, mask, beta=beta, loss_type=trl_loss_type, level="sequence"
    )
    ours = output.loss_sum / output.num_units
    assert torch.allclose(ours, trl_loss, atol=1e-6), (ours, trl_loss)
    assert math.isclose(output.metrics["clip_fraction"].item(), trl_clip, abs_tol=1e-6)
    assert 0 < trl_clip < 1
    ours.backward()
    trl_loss.backward()
    assert torch.allclose(ours_logps.grad, trl_logps.grad, atol=1e-6)


def _trl_rloo_advantages(rewards, group_size, normalize, old_logps=None, ref_logps=None, mask=None, beta=0.0):
    """TRL 1.16's RLOOTrainer._generate_and_score_completions on a stand-in trainer: generation, the reward
    functions and the forward passes are stubs handing back ``rewards``, ``old_logps`` and ``ref_logps``; the KL in
    the reward, the leave-one-out baseline and the normalisation are TRL's own code."""
    from trl.trainer.rloo_trainer import RLOOTrainer

    n = rewards.numel()
    width = 3 if mask is None else mask.shape[1]
    lengths = [width] * n if mask is None else mask.sum(1).tolist()
    completion_ids = [[5] * int(length) for length in lengths]
    old_logps = torch.zeros(n, width) if old_logps is None else old_logps
    ns = types.SimpleNamespace
    policy, reference = ns(training=True, is_gradient_checkpointing=False), object()
    trainer = ns(
        accelerator=ns(device=torch.device("cpu"), process_index=0, gather=lambda t: t, reduce=lambda t, reduction: t),
        model=policy,
        ref_model=reference,
        args=ns(per_device_train_batch_size=n, gradient_checkpointing_kwargs=None),
        _generate=lambda prompts: ([[1, 2]] * n, completion_ids, ["c"] * n),
        _get_per_token_logps_and_entropies=lambda model, *a, **k: (
            old_logps if model is policy else ref_logps,
            None,
            None,
        ),
        _calculate_rewards=lambda inputs, prompts, completions, ids: rewards[:, None].clone(),
        _tokenizer=ns(pad_token_id=0),
        pad_to_multiple_of=None,
        mask_truncated_completions=False,
        beta=beta,
        num_generations=group_size,
        reward_weights=torch.ones(1),
        reward_clip_range=None,
        normalize_advantages=normalize,
        reward_func_names=["reward"],
        _metrics={"train": defaultdict(list)},
        _logs={
            "prompt": [],
            "completion": [],
            "rewards": defaultdict(list),
            "advantages": [],
            "extra": defaultdict(list),
        },
        _pending_extra_logs={},
        _pending_metrics={},
        log_multimodal=False,
    )
    return RLOOTrainer._generate_and_score_completions(trainer, [{"prompt": "p"}] * n)["advantages"]


def test_rloo_advantages_match_trl_rloo_trainer():
    torch.manual_seed(0)
    group = 4
    rewards = torch.randn(6 * group)
    rewards[:group] = 1.0  # a flat group
    rewards[group : 2 * group] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # binary rewards
    assert torch.allclose(rloo_advantages(rewards, group), _trl_rloo_advantages(rewards, group, False), atol=1e-6)
    # TRL's optional global normalisation is a whitening of the same advantages (unbiased std + 1e-4).
    theirs = _trl_rloo_advantages(rewards, group, True)
    ours = rloo_advantages(rewards, group)
    assert torch.allclose((ours - ours.mean()) / (ours.std() + 1e-4), theirs, atol=1e-6)


def test_rloo_with_the_kl_in_the_reward_matches_trl_rloo_trainer():
    """The recipe's RLOO with kl_beta > 0: the summed k1 KL of each completion, times beta, comes off its reward
    before the leave-one-out baseline, as RLOOTrainer does it."""
    torch.manual_seed(2)
    group, n, width = 4, 8, 6
    rewards = torch.randn(n)
    mask = (torch.arange(width)[None] < torch.randint(1, width + 1, (n,))[:, None]).long()
    old_logps = -torch.rand(n, width) * 2
    ref_logps = old_logps + 0.5 * torch.randn(n, width)
    # TRL pads completions right and computes on the padded width; padding positions must not count.
    ours = rloo_advantages(rewards - 0.05 * sequence_kl_penalty(old_logps, ref_logps, mask), group)
    theirs = _trl_rloo_advantages(rewards, group, False, old_logps, ref_logps, mask, beta=0.05)
    assert torch.allclose(ours, theirs, atol=1e-6)
