"""KTO's loss: hand-derived values, and TRL 1.16's KTOTrainer._compute_loss on the same tensors (issue 31)."""

import math
import types
from collections import defaultdict

import pytest
import torch

from tests.losses.trl_source import IdentityAccelerator, namespace, stand_in, trl_functions
from tunekit.errors import InvalidValue
from tunekit.losses.kto import KTOLossConfig, kto_loss, kto_reference_point


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_kto_loss_matches_hand_derived_values():
    # Two examples. Mismatched log ratios 0.4 and 0.2: z0 = 0.3. beta = 0.5, weights 1.0 and 2.0.
    #   desirable, r = 1.3:    1.0 * (1 - sigmoid(0.5 * (1.3 - 0.3)))  = 1 - sigmoid(0.5)
    #   undesirable, r = -0.7: 2.0 * (1 - sigmoid(0.5 * (0.3 + 0.7)))  = 2 * (1 - sigmoid(0.5))
    logps, ref = torch.tensor([-2.0, -3.0]), torch.tensor([-3.3, -2.3])
    kl, ref_kl = torch.tensor([-1.0, -2.0]), torch.tensor([-1.4, -2.2])
    config = KTOLossConfig(beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    out = kto_loss(logps, ref, torch.tensor([True, False]), kl, ref_kl, config)
    assert math.isclose(out.loss_sum.item(), 3 * (1 - _sigmoid(0.5)), rel_tol=1e-6)
    assert out.num_units.item() == 2
    m = out.metrics
    assert math.isclose(m["kl"].item(), 0.3, rel_tol=1e-6)
    assert math.isclose(m["rewards/chosen"].item(), 0.65, rel_tol=1e-6)
    assert math.isclose(m["rewards/rejected"].item(), -0.35, rel_tol=1e-6)
    assert math.isclose(m["rewards/margin"].item(), 1.0, rel_tol=1e-6)
    assert m["rewards/accuracy"].item() == 1.0 and m["rewards/pairwise_accuracy"].item() == 1.0
    assert math.isclose(m["logps/chosen"].item(), -2.0) and math.isclose(m["logps/rejected"].item(), -3.0)


def test_pairwise_accuracy_ranks_every_desirable_against_every_undesirable():
    # Rewards (beta 1, reference 0): desirable 0.5 and -1.0, undesirable 0.0 and -2.0. Of the 4 cross pairs, 0.5
    # beats both, -1.0 beats -2.0 only: 3 / 4. Against z0 = 0: 0.5 right, -1.0 wrong, 0.0 a tie (wrong), -2.0 right.
    logps = torch.tensor([0.5, 0.0, -1.0, -2.0])
    labels = torch.tensor([True, False, True, False])
    out = kto_loss(logps, torch.zeros(4), labels, torch.zeros(4), torch.zeros(4), KTOLossConfig(beta=1.0))
    assert out.metrics["rewards/pairwise_accuracy"].item() == 0.75
    assert out.metrics["rewards/accuracy"].item() == 0.5


def test_reference_point_is_clamped_at_zero_detached_and_summed_across_processes():
    kl = torch.tensor([-1.0, -1.0], requires_grad=True)
    assert kto_reference_point(kl, torch.tensor([0.0, 0.0])).item() == 0.0  # mean -1, clamped
    z0 = kto_reference_point(kl, torch.tensor([-2.0, -1.5]))
    assert math.isclose(z0.item(), 0.75) and not z0.requires_grad
    # Another process holding log ratios summing to 3.0 over 2 examples: (1.5 + 3.0) / 4.
    other = torch.tensor([3.0, 2.0])
    assert math.isclose(kto_reference_point(kl, torch.tensor([-2.0, -1.5]), lambda s: s + other).item(), 1.125)


def test_a_policy_equal_to_its_reference_scores_zero_accuracy_and_one_sided_batches_log_one_side():
    zeros = torch.zeros(3)
    out = kto_loss(zeros, zeros, torch.tensor([True, True, True]), zeros, zeros, KTOLossConfig(beta=0.1))
    assert out.metrics["rewards/accuracy"].item() == 0.0
    assert math.isclose(out.loss_sum.item(), 1.5, rel_tol=1e-6)  # 3 x (1 - sigmoid(0))
    assert "rewards/chosen" in out.metrics and "rewards/rejected" not in out.metrics
    assert "rewards/margin" not in out.metrics and "rewards/pairwise_accuracy" not in out.metrics
    with pytest.raises(ValueError, match="labels must be"):
        kto_loss(zeros, zeros, torch.tensor([True]), zeros, zeros, KTOLossConfig())


BAD_SETTINGS = [{"beta": 0.0}, {"desirable_weight": -1.0}, {"desirable_weight": 0.0, "undesirable_weight": 0.0}]


@pytest.mark.parametrize("overrides", BAD_SETTINGS)
def test_bad_loss_settings_are_named(overrides):
    with pytest.raises(InvalidValue, match=next(iter(overrides))):
        KTOLossConfig(**overrides)


def _trl_kto_loss(logps, ref_logps, kl_logps, ref_kl_logps, labels, beta, desirable_weight, undesirable_weight):
    """TRL 1.16's KTOTrainer._compute_loss (and its _compute_kl_logps), compiled from its source, on a stand-in
    trainer with precomputed reference log-probs. The model is a stub whose per-token log-probs sum to ``logps``
    (matched rows) or ``kl_logps`` (mismatched rows); z0, the losses and their mean are TRL's own code."""
    fns = trl_functions(
        "trainer/kto_trainer.py", ["KTOTrainer._compute_loss", "KTOTrainer._compute_kl_logps"], namespace()
    )
    batch, width = logps.shape[0], 4
    matched_ids, kl_ids = torch.ones(batch, width, dtype=torch.long), torch.ones(batch, width, dtype=torch.long)

    def per_token(sums):  # [B] sums spread over the width - 1 predicted positions, differentiably
        return sums[:, None].expand(batch, width - 1) / (width - 1)

    def model(input_ids, **kwargs):
        sums = logps if input_ids is matched_ids else kl_logps
        zeros = torch.zeros(batch, width - 1)
        return types.SimpleNamespace(log_probs=per_token(sums), entropy=zeros, mean_logits=zeros, aux_loss=None)

    model.training = True
    trainer = stand_in(
        fns,
        accelerator=IdentityAccelerator(),
        model=model,
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        calculate_KL=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": matched_ids,
        "attention_mask": torch.ones(batch, width, dtype=torch.long),
        "completion_mask": torch.ones(batch, width, dtype=torch.long),
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones(batch, width, dtype=torch.long),
        "KL_completion_mask": torch.ones(batch, width, dtype=torch.long),
        "label": labels.clone(),
        "ref_logps": ref_logps,
        "ref_KL_logps": ref_kl_logps,
    }
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33)])
@pytest.mark.parametrize("kl_sign", [1.0, -1.0])  # a negative mean mismatched ratio: z0 clamps to 0
def test_kto_loss_matches_trl_kto_trainer(weights, kl_sign):
    torch.manual_seed(0)
    batch = 9
    ref_logps = -torch.rand(batch) * 20
    ref_kl_logps = -torch.rand(batch) * 20
    kl_logps = ref_kl_logps + kl_sign * (0.5 + torch.rand(batch))
    labels = torch.tensor([True, False, True, True, False, False, True, False, True])
    ours_logps = (ref_logps + 3 * torch.randn(batch)).requires_grad_()
    trl_logps = ours_logps.detach().clone().requires_grad_()
    config = KTOLossConfig(beta=0.2, desirable_weight=weights[0], undesirable_weight=weights[1])

    out = kto_loss(ours_logps, ref_logps, labels, kl_logps, ref_kl_logps, config)
    trl_loss, trl_metrics = _trl_kto_loss(trl_logps, ref_logps, kl_logps, ref_kl_logps, labels, 0.2, *weights)
    ours = out.loss_sum / out.num_units
    assert torch.allclose(ours, trl_loss, atol=1e-6), (ours, trl_loss)
    assert math.isclose(out.metrics["kl"].item(), trl_metrics["kl"][-1], abs_tol=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert math.isclose(out.metrics[key].item(), trl_metrics[key][-1], abs_tol=1e-5), key
    ours.backward()
    trl_loss.backward()
    assert torch.allclose(ours_logps.grad, trl_logps.grad, atol=1e-6)
