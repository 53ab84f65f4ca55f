import math
import types
from collections import defaultdict

import pytest
import torch
from trl_source import IdentityAccelerator, namespace, stand_in, trl_functions

from tunekit.losses.reward import bradley_terry_loss


def test_bradley_terry_matches_hand_derived_values():
    chosen = torch.tensor([2.0, 0.0])
    rejected = torch.tensor([0.0, 0.0])
    # -log sigmoid(x) = log(1 + e^-x): pair 0 has x = 2, pair 1 ties at x = 0 -> log 2.
    loss = bradley_terry_loss(chosen, rejected)
    metrics = loss.metrics
    assert math.isclose(loss.loss_sum.item(), math.log1p(math.exp(-2.0)) + math.log(2.0), abs_tol=1e-7)
    assert loss.num_units.item() == 2
    # Per pair as well: each pair on its own.
    for i, expected in enumerate([math.log1p(math.exp(-2.0)), math.log(2.0)]):
        single = bradley_terry_loss(chosen[i : i + 1], rejected[i : i + 1])
        assert math.isclose(single.loss_sum.item(), expected, abs_tol=1e-7)
    assert metrics["accuracy"].item() == 0.5  # 2 > 0 counts, the tie does not
    assert metrics["margin"].item() == 1.0  # mean of (2, 0)
    assert metrics["reward_chosen"].item() == 1.0
    assert metrics["reward_rejected"].item() == 0.0


def test_margin_and_centering_terms_by_hand():
    chosen = torch.tensor([2.0, 0.0])
    rejected = torch.tensor([0.0, 0.0])
    margin = torch.tensor([1.0, -1.0])
    # x = chosen - rejected - margin = (1, 1) -> log(1 + e^-1) each; centering adds 0.01 * (c + r)^2 = (0.04, 0).
    loss = bradley_terry_loss(chosen, rejected, margin=margin, center_coef=0.01)
    expected = math.log1p(math.exp(-1.0))
    for i, pair_loss in enumerate([expected + 0.04, expected]):
        rows = slice(i, i + 1)
        single = bradley_terry_loss(chosen[rows], rejected[rows], margin=margin[rows], center_coef=0.01)
        assert math.isclose(single.loss_sum.item(), pair_loss, abs_tol=1e-7)
    assert math.isclose(loss.loss_sum.item(), 2 * expected + 0.04, abs_tol=1e-7)
    assert loss.metrics["margin"].item() == 1.0  # the logged margin is the rewards' gap, not the required one


def test_shapes_that_would_broadcast_are_rejected():
    with pytest.raises(ValueError, match=r"\[B\]"):
        bradley_terry_loss(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), margin=torch.zeros(3, 1))


def test_bf16_rewards_are_reduced_in_fp32():
    loss = bradley_terry_loss(torch.tensor([1.5], dtype=torch.bfloat16), torch.tensor([0.5], dtype=torch.bfloat16))
    assert loss.loss_sum.dtype == torch.float32


def _trl_reward_loss(chosen, rejected, margin, center_coef):
    """TRL 1.16 RewardTrainer.compute_loss, run on a stand-in model whose score head returns the given rewards."""
    fns = trl_functions("trainer/reward_trainer.py", ["RewardTrainer.compute_loss"], namespace())
    trainer = stand_in(
        fns,
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(center_rewards_coefficient=center_coef),
        accelerator=IdentityAccelerator(),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    scores = torch.cat([chosen, rejected]).unsqueeze(-1)  # [2B, 1]: the batch is [chosen..., rejected...]

    def model(**inputs):
        return types.SimpleNamespace(logits=scores)

    inputs = {"input_ids": torch.zeros(len(scores), 4, dtype=torch.long), "attention_mask": torch.ones(len(scores), 4)}
    if margin is not None:
        inputs["margin"] = margin
    loss = trainer.compute_loss(model, inputs)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center_coef", [None, 0.01])
def test_bradley_terry_matches_trl_reward_trainer(with_margin, center_coef):
    torch.manual_seed(0)
    chosen, rejected = torch.randn(6).requires_grad_(), torch.randn(6).requires_grad_()
    margin = torch.rand(6) if with_margin else None

    trl_loss, trl_metrics = _trl_reward_loss(chosen, rejected, margin, center_coef)
    trl_grads = torch.autograd.grad(trl_loss, (chosen, rejected))

    output = bradley_terry_loss(chosen, rejected, margin=margin, center_coef=center_coef or 0.0)
    metrics = output.metrics
    # The runner divides the summed loss by the number of pairs.
    loss = output.loss_sum / output.num_units
    grads = torch.autograd.grad(loss, (chosen, rejected))

    assert math.isclose(loss.item(), trl_loss.item(), abs_tol=1e-6)
    for ours, theirs in zip(grads, trl_grads, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)
    assert math.isclose(metrics["accuracy"].item(), trl_metrics["accuracy"], abs_tol=1e-6)
    assert 0 < trl_metrics["accuracy"] < 1
    assert math.isclose(metrics["margin"].item(), trl_metrics["margin"], abs_tol=1e-6)
