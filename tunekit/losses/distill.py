"""Distillation losses: how far a student's next-token distribution is from a teacher's, token by token.

One family covers the three divergences the distillation literature uses, as in GKD (Agarwal et al., 2024,
"On-Policy Distillation of Language Models", eq. 1), with p_t the teacher's and p_s the student's distribution
over the vocabulary at one position, both at temperature tau (logits / tau, then softmax):

- ``forward_kl``: KL(p_t || p_s) = sum_v p_t (log p_t - log p_s). Mean-seeking: the student is pushed to cover
  every token the teacher gives weight to (classic knowledge distillation).
- ``reverse_kl``: KL(p_s || p_t). Mode-seeking: the student is pushed off tokens the teacher finds unlikely, at
  the price of dropping some it finds likely; the usual choice on the student's own samples.
- ``jsd`` with beta in (0, 1): with the mixture m = (1 - beta) p_s + beta p_t,
  JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m). beta = 0.5 is the symmetric Jensen-Shannon
  divergence; beta -> 0 behaves like forward KL, beta -> 1 like reverse KL (both scaled down by beta).

These are TRL's ``generalized_jsd_loss`` quantities (beta 0: forward, beta 1: reverse, else JSD with the same
mixture); tests/losses/test_distill_loss.py checks the values against it. No tau^2 factor is applied, as in TRL.

Memory: a vocabulary of V = 128k in fp32 is 0.5 MB per token, and each divergence needs several [K, V] tensors
(two log-softmaxes, a mixture, products) whose autograd would keep all of them for the backward. The loss therefore
runs over ``chunk_size`` tokens at a time under activation checkpointing: only one chunk's fp32 intermediates
exist at any moment, in the forward and again when the backward recomputes them. The inputs (the two models'
logits at the K completion positions, in whatever dtype the models produced) are the only [K, V] tensors held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunekit.errors import require
from tunekit.losses import LossOutput

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


@dataclass
class DistillLossConfig:
    # forward_kl: KL(teacher || student), the student covers everything the teacher does (classic distillation);
    # reverse_kl: KL(student || teacher), mode-seeking, the usual choice on the student's own samples; jsd: the
    # generalised Jensen-Shannon divergence with beta (GKD). See docs/distill.md.
    divergence: Divergence = "forward_kl"
    # jsd only: weight of the teacher in the mixture m = (1 - beta) p_student + beta p_teacher, in (0, 1); 0.5 is the
    # symmetric Jensen-Shannon divergence.
    beta: float = 0.5
    # Both models' logits are divided by this before their softmax; above 1 softens the teacher's distribution and
    # shows the student more of its ranking of unlikely tokens.
    temperature: float = 1.0
    # Weight of the plain next-token (SFT) loss on the data's tokens: loss = (1 - sft_weight) * divergence +
    # sft_weight * cross-entropy. 1 trains by SFT alone while still measuring the divergence to the teacher.
    sft_weight: float = 0.0
    # Completion tokens whose full-vocabulary probabilities are materialised at once, in the forward and again in
    # the backward (each is recomputed there, not kept).
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        require(0 < self.beta < 1, "beta", f"must be in (0, 1) (0 is forward_kl, 1 is reverse_kl), got {self.beta}")
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require(0 <= self.sft_weight <= 1, "sft_weight", f"must be in [0, 1], got {self.sft_weight}")
        require(self.chunk_size >= 1, "chunk_size", f"must be at least 1, got {self.chunk_size}")

    @property
    def mixture_beta(self) -> float:
        """The divergence as one number, TRL's convention: 0 forward KL, 1 reverse KL, else the JSD's beta."""
        return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(self.divergence, self.beta)


def token_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token divergence between two next-token distributions (see the module docstring).

    student_logits, teacher_logits: [K, V] (any float dtype; computed in fp32) -> [K] fp32. ``beta`` 0 gives
    KL(teacher || student), 1 gives KL(student || teacher), anything between the generalised JSD. Gradients flow
    to ``student_logits`` only if it requires them; the teacher's are treated as constants by the caller.
    """
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta == 0:
        return _kl(log_t, log_s)
    if beta == 1:
        return _kl(log_s, log_t)
    log_m = torch.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))
    return beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[K, V] log-probabilities -> [K] KL(p || q). ``xlogy``-style: a token p gives no weight adds exactly 0."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def _chunk_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    temperature: float,
    sft_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk: ``(loss [C], divergence [C], kl [C], cross_entropy [C])`` per token.

    ``kl`` is the forward KL at temperature 1, whatever the training divergence: the one measure of distance to
    the teacher that every run logs, so runs with different losses (or SFT alone) compare on it.
    """
    divergence = token_divergence(student_logits, teacher_logits, beta, temperature)
    cross_entropy = F.cross_entropy(student_logits.float(), targets, reduction="none")
    loss = (1 - sft_weight) * divergence + sft_weight * cross_entropy
    with torch.no_grad():
        same = beta == 0 and temperature == 1
        kl = divergence.detach() if same else token_divergence(student_logits, teacher_logits, 0.0, 1.0)
    return loss, divergence.detach(), kl, cross_entropy.detach()


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, config: DistillLossConfig
) -> LossOutput:
    """The distillation loss over K completion tokens, summed; the unit is the token, as SFT's.

    student_logits: [K, V] at the positions that predict each completion token (requires grad);
    teacher_logits: [K, V] at the same positions (no grad); targets: [K] the data's tokens there, for the SFT
    term. Returns ``loss_sum`` [] = sum over tokens of (1 - sft_weight) * divergence + sft_weight * cross-entropy,
    ``num_units`` = K, and the per-token means ``divergence``, ``kl`` (forward KL at temperature 1) and ``ce``
    (the student's cross-entropy on the targets) as metrics.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be [K, V]; got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )
    teacher_logits = teacher_logits.detach()
    beta, tau, alpha = config.mixture_beta, config.temperature, config.sft_weight
    totals = [student_logits.new_zeros((), dtype=torch.float32) for _ in range(4)]
    for start in range(0, student_logits.shape[0], config.chunk_size):
        chunk = slice(start, start + config.chunk_size)
        args = (student_logits[chunk], teacher_logits[chunk], targets[chunk], beta, tau, alpha)
        if student_logits.requires_grad:
            terms = checkpoint(_chunk_terms, *args, use_reentrant=False)
        else:
            terms = _chunk_terms(*args)
        totals = [total + term.sum() for total, term in zip(totals, terms, strict=True)]
    loss_sum, divergence, kl, cross_entropy = totals
    count = torch.tensor(student_logits.shape[0], device=student_logits.device)
    per_token = max(student_logits.shape[0], 1)
    metrics = {"divergence": divergence / per_token, "kl": kl / per_token, "ce": cross_entropy / per_token}
    return LossOutput(loss_sum, count, metrics)
