"""Distillation losses: hand-derived values, TRL's GKD loss to 1e-6 (values and gradients), chunking that changes
nothing but memory, the SFT mix, and the config's named errors."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from tunekit.errors import InvalidValue
from tunekit.losses.distill import DistillLossConfig, distillation_loss, token_divergence


def logits_of(probs):
    return torch.tensor(probs).log().unsqueeze(0)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


TEACHER, STUDENT = [0.5, 0.5], [0.25, 0.75]


def test_the_three_divergences_by_hand():
    t, s = logits_of(TEACHER), logits_of(STUDENT)
    assert token_divergence(s, t, beta=0.0).item() == pytest.approx(kl(TEACHER, STUDENT), abs=1e-7)
    assert token_divergence(s, t, beta=1.0).item() == pytest.approx(kl(STUDENT, TEACHER), abs=1e-7)
    beta = 0.3
    mixture = [(1 - beta) * ps + beta * pt for ps, pt in zip(STUDENT, TEACHER, strict=True)]
    expected = beta * kl(TEACHER, mixture) + (1 - beta) * kl(STUDENT, mixture)
    assert token_divergence(s, t, beta=beta).item() == pytest.approx(expected, abs=1e-7)


def test_temperature_softens_both_distributions_before_the_divergence():
    t, s = logits_of(TEACHER), logits_of(STUDENT)
    # Dividing log-probabilities by 2 takes square roots of the probabilities, then renormalises.
    soft = [math.sqrt(p) for p in STUDENT]
    soft = [p / sum(soft) for p in soft]
    assert token_divergence(s, t, beta=0.0, temperature=2.0).item() == pytest.approx(kl(TEACHER, soft), abs=1e-7)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_a_student_equal_to_its_teacher_has_zero_loss(divergence):
    logits = torch.randn(5, 11)
    out = distillation_loss(logits, logits.clone(), torch.zeros(5, dtype=torch.long), DistillLossConfig(divergence))
    assert out.loss_sum.item() == pytest.approx(0.0, abs=1e-6)


def batch(seed=0, b=3, t=9, v=40):
    torch.manual_seed(seed)
    student = (torch.randn(b, t, v, dtype=torch.float64) * 3).float()
    teacher = (torch.randn(b, t, v, dtype=torch.float64) * 3).float()
    labels = torch.randint(0, v, (b, t))
    labels[0, :4] = -100  # a prompt
    labels[2, 6:] = -100  # padding
    return student, teacher, labels


@pytest.mark.parametrize(
    "divergence, beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9)]
)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_equals_trl_gkd_loss_and_its_gradient(divergence, beta, temperature):
    pytest.importorskip("trl")
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    student, teacher, labels = batch()
    config = DistillLossConfig(divergence, beta=beta, temperature=temperature, chunk_size=5)
    mask = labels != -100
    ours_in = student.clone().requires_grad_(True)
    ours = distillation_loss(ours_in[mask], teacher[mask], labels[mask], config)
    ours.mean().backward()
    theirs_in = student.clone().requires_grad_(True)
    theirs = GKDTrainer.generalized_jsd_loss(
        theirs_in, teacher, labels=labels, beta=config.mixture_beta, temperature=temperature
    )
    theirs.backward()
    assert ours.num_units.item() == mask.sum().item()
    assert ours.mean().item() == pytest.approx(theirs.item(), abs=1e-6)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_chunking_changes_neither_the_loss_nor_the_gradient(divergence):
    student, teacher, labels = batch()
    mask = labels != -100
    results = []
    for chunk_size in (1, 4, 10_000):
        logits = student[mask].clone().requires_grad_(True)
        out = distillation_loss(
            logits, teacher[mask], labels[mask], DistillLossConfig(divergence, chunk_size=chunk_size)
        )
        out.loss_sum.backward()
        results.append((out.loss_sum.detach(), logits.grad, out.metrics["kl"]))
    for loss, grad, metric in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(grad, results[0][1], atol=1e-6, rtol=0)
        torch.testing.assert_close(metric, results[0][2], atol=1e-6, rtol=0)


def test_the_backward_keeps_no_full_vocabulary_intermediates():
    """Autograd saves only the inputs' chunk views: the fp32 softmaxes of all K tokens never exist at once.
    Without the chunked checkpointing the graph would hold several [K, V] tensors (two log-softmaxes, the
    mixture, the cross-entropy's), measured here as saved elements."""
    k, v = 64, 500
    student = torch.randn(k, v, requires_grad=True)
    teacher = torch.randn(k, v)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    config = DistillLossConfig("jsd", sft_weight=0.5, chunk_size=16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = distillation_loss(student, teacher, torch.zeros(k, dtype=torch.long), config)
    out.loss_sum.backward()
    assert sum(saved) <= 2 * k * v + 4 * k  # the student and teacher chunks, and a few per-token values
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_sft_weight_mixes_in_the_cross_entropy_on_the_data_tokens():
    student, teacher, labels = batch()
    mask = labels != -100
    s, t, y = student[mask], teacher[mask], labels[mask]
    divergence = distillation_loss(s, t, y, DistillLossConfig("forward_kl")).loss_sum
    cross_entropy = F.cross_entropy(s, y, reduction="sum")
    sft = distillation_loss(s, t, y, DistillLossConfig("forward_kl", sft_weight=1.0))
    assert sft.loss_sum.item() == pytest.approx(cross_entropy.item(), rel=1e-6)
    mixed = distillation_loss(s, t, y, DistillLossConfig("forward_kl", sft_weight=0.25)).loss_sum
    assert mixed.item() == pytest.approx(0.75 * divergence.item() + 0.25 * cross_entropy.item(), rel=1e-6)
    # The per-token metrics are the same whatever the mix: runs with different losses compare on them.
    assert sft.metrics["kl"].item() == pytest.approx(divergence.item() / mask.sum().item(), rel=1e-6)
    assert sft.metrics["ce"].item() == pytest.approx(cross_entropy.item() / mask.sum().item(), rel=1e-6)


def test_kl_metric_is_the_forward_kl_at_temperature_one_whatever_the_loss():
    student, teacher, labels = batch()
    mask = labels != -100
    s, t, y = student[mask], teacher[mask], labels[mask]
    reference = distillation_loss(s, t, y, DistillLossConfig("forward_kl")).metrics["kl"]
    other = distillation_loss(s, t, y, DistillLossConfig("reverse_kl", temperature=3.0)).metrics
    assert other["kl"].item() == pytest.approx(reference.item(), rel=1e-6)
    assert other["divergence"].item() != pytest.approx(reference.item(), rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"divergence": "jsd", "beta": 0.0}, "beta must be in (0, 1)"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"sft_weight": 1.5}, "sft_weight must be in [0, 1]"),
        ({"chunk_size": 0}, "chunk_size must be at least 1"),
    ],
)
def test_config_mistakes_are_named(kwargs, message):
    with pytest.raises(InvalidValue, match=re.escape(message)):
        DistillLossConfig(**kwargs)
