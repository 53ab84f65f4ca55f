"""KTO (Ethayarajh et al. 2024): a loss on unpaired binary feedback, each completion marked desirable or not.

Prospect theory's value of a completion is measured against a reference point z0, the policy's KL from the
reference model, so a desirable completion only earns its reward beyond what drifting anywhere would:

    r(x, y) = log pi(y|x) - log pi_ref(y|x)                         the implicit reward, as in DPO
    z0      = max(0, mean over the batch of r(x', y'))              with (x', y') mismatched pairs (see below)
    loss    = desirable_weight   * (1 - sigmoid(beta * (r - z0)))   for a desirable completion
              undesirable_weight * (1 - sigmoid(beta * (z0 - r)))   for an undesirable one

z0 is estimated from the batch's completions paired with *other* prompts (y_{i-1} after x_i, cyclically), which
samples KL(pi || pi_ref) without generating anything, and no gradient flows through it. Numbers match TRL 1.16's
KTOTrainer (loss_type="kto"): the same z0 (a mean over the micro-batch, over every process, clamped at 0) and the
same losses, whose mean over the batch's examples is the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunekit.errors import require
from tunekit.losses import LossOutput


@dataclass
class KTOLossConfig:
    # Scale of the implicit reward inside the sigmoid; larger keeps the policy closer to the reference.
    beta: float = 0.1
    # Weight of each desirable example's loss. With unbalanced data, KTO's authors advise weights such that
    # desirable_weight x desirables / (undesirable_weight x undesirables) lies in [1, 4/3].
    desirable_weight: float = 1.0
    # Weight of each undesirable example's loss.
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        require(self.beta > 0, "beta", f"must be positive, got {self.beta}")
        require(self.desirable_weight >= 0, "desirable_weight", f"must be at least 0, got {self.desirable_weight}")
        require(
            self.undesirable_weight >= 0, "undesirable_weight", f"must be at least 0, got {self.undesirable_weight}"
        )
        require(
            self.desirable_weight + self.undesirable_weight > 0,
            "desirable_weight",
            "and undesirable_weight are both 0: nothing would be trained",
        )


def kto_reference_point(
    kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """[B] policy and reference log-probs of the mismatched completions -> [] z0 = max(0, mean log ratio), detached.

    ``sum_across`` sums ``[sum, count]`` over processes (e.g. :func:`tunekit.train.engines.all_reduce_sum`), so z0
    is the mean over every process's examples, as TRL's gathered mean is with equal micro-batches; without it, this
    batch's alone.
    """
    log_ratio = (kl_logps.float() - ref_kl_logps.float()).detach()
    stats = torch.stack([log_ratio.sum(), torch.tensor(float(log_ratio.numel()), device=log_ratio.device)])
    if sum_across is not None:
        stats = sum_across(stats)
    return (stats[0] / stats[1].clamp(min=1.0)).clamp(min=0.0)


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    config: KTOLossConfig,
    sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LossOutput:
    """KTO on a batch of B examples -> :class:`~tunekit.losses.LossOutput` summed over the B examples (unit: example).

    logps, ref_logps: [B] summed completion log-probs under the policy and the reference; labels: [B] bool, true for
    a desirable completion; kl_logps, ref_kl_logps: [B] the same sums for the mismatched (prompt, completion) pairs
    that estimate z0 (:func:`kto_reference_point`).

    Metrics (detached): "kl" (z0 / 1, in nats), "rewards/chosen" and "logps/chosen" (means over the desirable
    examples, when the batch has any), "rewards/rejected" and "logps/rejected" (over the undesirable ones), their
    difference "rewards/margin" and "rewards/pairwise_accuracy" (when the batch has both: the share of the batch's
    (desirable, undesirable) pairs, whatever their prompts, whose desirable example has the higher implicit
    reward), and "rewards/accuracy": the share of examples whose implicit reward beta * r lies on their label's side
    of beta * z0, the point KTO's loss divides at. Ties count as wrong in both, so a policy equal to its reference
    scores 0, as DPO's accuracy does.
    """
    for name, value in (("ref_logps", ref_logps), ("labels", labels), ("kl_logps", kl_logps)):
        if value.shape != logps.shape or logps.dim() != 1:
            raise ValueError(f"kto_loss: {name} must be [B] = {tuple(logps.shape)}; got {tuple(value.shape)}")
    z0 = kto_reference_point(kl_logps, ref_kl_logps, sum_across)
    desirable = labels.bool()
    log_ratio = logps.float() - ref_logps.float()
    # 1 - sigmoid(x) = sigmoid(-x): the desirable side wants r above z0, the undesirable side below it.
    signed = torch.where(desirable, log_ratio - z0, z0 - log_ratio)
    weights = torch.where(desirable, config.desirable_weight, config.undesirable_weight).to(log_ratio.dtype)
    losses = weights * F.sigmoid(-config.beta * signed)
    with torch.no_grad():
        rewards = config.beta * log_ratio
        metrics = {"kl": z0, "rewards/accuracy": (signed > 0).float().mean()}
        for side, chosen in (("chosen", desirable), ("rejected", ~desirable)):
            if chosen.any():
                metrics[f"rewards/{side}"] = rewards[chosen].mean()
                metrics[f"logps/{side}"] = logps.float()[chosen].mean()
        if desirable.any() and not desirable.all():
            metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
            # Every (desirable, undesirable) pair of the batch: does the implicit reward rank them right?
            better = rewards[desirable][:, None] > rewards[~desirable][None, :]
            metrics["rewards/pairwise_accuracy"] = better.float().mean()
    return LossOutput(losses.sum(), torch.tensor(len(losses), device=losses.device), metrics)
