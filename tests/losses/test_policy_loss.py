import math

import pytest
import torch

from tests.losses.trl_grpo import trl_grpo_loss
from tunekit.losses.policy import aggregate, clipped_surrogate, count_units, grpo_loss, k3_kl, ppo_losses


def test_k3_kl_matches_hand_derived_values():
    # logp = log 0.5, ref = log 0.25: d = ref - logp = log 0.5; exp(d) - d - 1 = 0.5 + log 2 - 1 = 0.193147.
    logps = torch.tensor([math.log(0.5), -1.3])
    ref_logps = torch.tensor([math.log(0.25), -1.3])
    assert torch.allclose(k3_kl(logps, ref_logps), torch.tensor([0.5 + math.log(2.0) - 1.0, 0.0]), atol=1e-7)
    torch.manual_seed(0)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_clipped_surrogate_matches_hand_derived_values_and_blocks_clipped_gradients():
    # clip_low 0.2, clip_high 0.28: the ratio is clipped to [0.8, 1.28].
    #   ratio 1.5, A = +1: -min(1.5, 1.28) = -1.28    clipped (too far up on a good token)
    #   ratio 0.5, A = -1: -min(-0.5, -0.8) = 0.8     clipped (too far down on a bad token)
    #   ratio 1.5, A = -1: -min(-1.5, -1.28) = 1.5    not clipped: the min keeps the pessimistic, unclipped term
    #   ratio 0.5, A = +1: -min(0.5, 0.8) = -0.5      not clipped
    #   ratio 1.1, A = +2: -min(2.2, 2.2) = -2.2      inside the range
    ratios = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.1]])
    advantages = torch.tensor([[1.0, -1.0, -1.0, 1.0, 2.0]])
    old_logps = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -0.1]])
    logps = (old_logps + ratios.log()).requires_grad_()
    loss, is_clipped = clipped_surrogate(logps, old_logps, advantages, clip_low=0.2, clip_high=0.28)
    assert torch.allclose(loss, torch.tensor([[-1.28, 0.8, 1.5, -0.5, -2.2]]), atol=1e-6)
    assert is_clipped.tolist() == [[True, True, False, False, False]]
    loss.sum().backward()
    # d(-ratio * A)/d logp = -ratio * A where unclipped; exactly 0 where the clipped term won.
    assert torch.allclose(logps.grad, torch.tensor([[0.0, 0.0, 1.5, -0.5, -2.2]]), atol=1e-6)
    # Per-sequence advantages [B] broadcast over the tokens.
    per_sequence, _ = clipped_surrogate(logps.detach(), old_logps, torch.tensor([2.0]), 0.2, 0.28)
    assert torch.allclose(per_sequence, torch.tensor([[-2.56, -1.0, -2.56, -1.0, -2.2]]), atol=1e-6)


# A ragged batch: 3 valid tokens, then 1, then 2 (padding holds garbage that must not count).
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0], [-1.0, 3.0, 70.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])


@pytest.mark.parametrize(
    "mode,loss_sum,num_items",
    [
        # token: (1 + 2 + 3) + 4 + (-1 + 3) = 12 over 6 tokens -> mean 2.
        ("token", 12.0, 6.0),
        # sequence: means 2, 4, 1 -> sum 7 over 3 sequences -> mean 7/3.
        ("sequence", 7.0, 3.0),
        # dr_grpo with max_tokens 4: sums 6, 4, 2 -> 12 / 4 = 3 over 3 sequences -> mean 1.
        ("dr_grpo", 3.0, 3.0),
    ],
)
def test_aggregation_modes_match_hand_derived_values(mode, loss_sum, num_items):
    got = aggregate(PER_TOKEN, MASK, mode, max_tokens=4)
    assert math.isclose(got.loss_sum.item(), loss_sum, rel_tol=1e-6)
    assert got.num_units.item() == num_items
    # The count a prepared batch declares before the forward is the same number.
    assert count_units(MASK.bool(), mode).item() == num_items


@pytest.mark.parametrize("mode", ["token", "sequence", "dr_grpo"])
def test_micro_batches_sum_to_the_whole_batch_mean(mode):
    torch.manual_seed(0)
    per_token = torch.randn(8, 10)
    mask = (torch.arange(10)[None, :] < torch.tensor([10, 1, 4, 7, 2, 9, 5, 3])[:, None]).long()
    whole = aggregate(per_token, mask, mode, max_tokens=10)
    whole_sum, whole_items = whole.loss_sum, whole.num_units
    # Uneven micro-batches (3, 1, 4 rows) with very different token counts: a mean of per-micro-batch means
    # would weigh the 1-row batch like the others; summing sums and counts does not.
    outputs = [aggregate(per_token[rows], mask[rows], mode, max_tokens=10) for rows in (slice(0, 3), [3], slice(4, 8))]
    parts = [(o.loss_sum, o.num_units) for o in outputs]
    split_mean = sum(s for s, _ in parts) / sum(n for _, n in parts)
    assert torch.allclose(split_mean, whole_sum / whole_items, atol=1e-6)
    if mode == "token":
        assert torch.allclose(whole_sum / whole_items, per_token[mask.bool()].mean(), atol=1e-6)
        mean_of_means = sum(s / n for s, n in parts) / len(parts)
        assert not torch.allclose(mean_of_means, whole_sum / whole_items, atol=1e-3)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate(PER_TOKEN, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(PER_TOKEN, MASK, "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown aggregation"):
        count_units(MASK, "mean")  # type: ignore[arg-type]


def test_grpo_loss_matches_hand_derived_values():
    # One sequence with A = +1 and two valid tokens (the third is padding), ref model given with beta 0.1.
    #   token 0: ratio 1.5 -> surrogate -1.28 (clipped); ref = logp + log 0.5 -> k3 = 0.5 + log 2 - 1 = 0.193147
    #   token 1: ratio 1.0 -> surrogate -1.0;            ref = logp          -> k3 = 0
    # per token: -1.28 + 0.1 * 0.193147 = -1.260685 and -1.0; token mode sum -2.260685 over 2 tokens.
    old_logps = torch.tensor([[-1.0, -2.0, -3.0]])
    logps = old_logps + torch.tensor([[math.log(1.5), 0.0, 5.0]])
    ref_logps = logps + torch.tensor([[math.log(0.5), 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    output = grpo_loss(
        logps, old_logps, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28, ref_logps=ref_logps, kl_beta=0.1
    )
    loss_sum, num_items, metrics = output.loss_sum, output.num_units, output.metrics
    k3 = 0.5 + math.log(2.0) - 1.0
    assert math.isclose(loss_sum.item(), -1.28 + 0.1 * k3 - 1.0, rel_tol=1e-6)
    assert num_items.item() == 2
    assert math.isclose(metrics["clip_fraction"].item(), 0.5)
    assert math.isclose(metrics["ratio_mean"].item(), 1.25, rel_tol=1e-6)
    assert math.isclose(metrics["kl"].item(), k3 / 2, rel_tol=1e-6)
    # Without a reference there is no KL metric and no penalty.
    output = grpo_loss(logps, old_logps, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28)
    assert math.isclose(output.loss_sum.item(), -2.28, rel_tol=1e-6)
    assert "kl" not in output.metrics


@pytest.mark.parametrize(
    "aggregation,trl_loss_type", [("token", "dapo"), ("token", "bnpo"), ("sequence", "grpo"), ("dr_grpo", "dr_grpo")]
)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_trl_grpo_trainer(aggregation, trl_loss_type, beta):
    torch.manual_seed(0)
    batch, width, max_len = 6, 9, 12
    old_logps = -torch.rand(batch, width) * 3
    ref_logps = old_logps + 0.3 * torch.randn(batch, width)
    advantages = torch.randn(batch)
    # Ragged lengths, with an empty row: TRL's "grpo" still counts it as a sequence, and so does ours.
    mask = (torch.arange(width)[None, :] < torch.tensor([9, 1, 4, 7, 0, 2])[:, None]).long()
    # Ratios spread well beyond [1 - 0.2, 1 + 0.28], so both clip edges and both advantage signs occur.
    ours_logps = (old_logps + 0.4 * torch.randn(batch, width)).requires_grad_()
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
        max_tokens=max_len,
    )
    loss_sum, num_items, metrics = output.loss_sum, output.num_units, output.metrics
    trl_loss, trl_clip, trl_kl = trl_grpo_loss(
        trl_logps, old_logps, ref_logps, advantages, mask, beta=beta, loss_type=trl_loss_type, max_len=max_len
    )
    ours = loss_sum / num_items
    assert torch.allclose(ours, trl_loss, atol=1e-6), (ours, trl_loss)
    assert math.isclose(metrics["clip_fraction"].item(), trl_clip, abs_tol=1e-6)
    assert 0 < trl_clip < 1
    if beta:
        assert math.isclose(metrics["kl"].item(), trl_kl, abs_tol=1e-6)
    ours.backward()
    trl_loss.backward()
    assert torch.allclose(ours_logps.grad, trl_logps.grad, atol=1e-6)


def test_ppo_losses_match_hand_derived_values():
    # clip 0.2, value_clip 0.5, value_coef 0.5, entropy_coef 0.1; two valid tokens then padding.
    #   token 0: ratio 1.5, A = +2: policy -min(3.0, 2.4) = -2.4 (clipped).
    #            v = 1.0, old v = 0.0 -> clip(v) = 0.5; R = 0.8: errors 0.2^2 = 0.04 and 0.3^2 = 0.09 ->
    #            value loss 0.5 * 0.09 = 0.045 (value clipped). entropy 1.0.
    #            total -2.4 + 0.5 * 0.045 - 0.1 * 1.0 = -2.4775
    #   token 1: ratio 1.0, A = -1: policy 1.0. v = 0.0 inside [old v -+ 0.5] = [-0.3, 0.7]; R = 1.0 ->
    #            value loss 0.5 * 1.0 = 0.5 (not clipped). entropy 2.0. total 1.0 + 0.25 - 0.2 = 1.05
    # approx_kl (k3 of KL(old || new)): token 0: ratio - 1 - log ratio = 0.5 - log 1.5; token 1: 0.
    old_logps = torch.tensor([[-1.0, -2.0, -3.0]])
    logps = old_logps + torch.tensor([[math.log(1.5), 0.0, 4.0]])
    output = ppo_losses(
        logps,
        old_logps,
        advantages=torch.tensor([[2.0, -1.0, 100.0]]),
        values=torch.tensor([[1.0, 0.0, 100.0]]),
        old_values=torch.tensor([[0.0, 0.2, -100.0]]),
        returns=torch.tensor([[0.8, 1.0, 0.0]]),
        mask=torch.tensor([[1, 1, 0]]),
        clip=0.2,
        value_clip=0.5,
        value_coef=0.5,
        entropy=torch.tensor([[1.0, 2.0, 50.0]]),
        entropy_coef=0.1,
    )
    loss_sum, num_items, metrics = output.loss_sum, output.num_units, output.metrics
    assert math.isclose(loss_sum.item(), -2.4775 + 1.05, rel_tol=1e-6)
    assert num_items.item() == 2
    expected = {
        "policy_loss": (-2.4 + 1.0) / 2,
        "value_loss": (0.045 + 0.5) / 2,
        "clip_fraction": 0.5,
        "value_clip_fraction": 0.5,
        "approx_kl": (0.5 - math.log(1.5)) / 2,
        "entropy": 1.5,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(metrics[key].item(), value, rel_tol=1e-5, abs_tol=1e-7), key


def test_ppo_value_clip_removes_the_value_gradient_beyond_the_trust_region():
    values = torch.tensor([[1.0, 0.1]], requires_grad=True)
    old_values = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[0.8, 1.0]])
    logps = torch.zeros(1, 2)
    output = ppo_losses(
        logps,
        logps,
        torch.zeros(1, 2),
        values,
        old_values,
        returns,
        torch.ones(1, 2),
        clip=0.2,
        value_clip=0.5,
        value_coef=1.0,
    )
    output.loss_sum.backward()
    # Token 0 is held at its clipped value 0.5 (constant in v): no gradient. Token 1: d 0.5 (v - R)^2 = v - R = -0.9.
    assert torch.allclose(values.grad, torch.tensor([[0.0, -0.9]]), atol=1e-6)
