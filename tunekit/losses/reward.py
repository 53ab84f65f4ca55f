"""Bradley-Terry loss for training a scalar reward model on chosen/rejected pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunekit.losses import LossOutput


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> LossOutput:
    """Negative log-likelihood that the chosen completion beats the rejected one, summed over pairs.

    chosen, rejected: [B] scalar rewards of the two completions of each pair; margin: [B] or None, a required gap
    (e.g. from graded human ratings) that the chosen reward must clear. Returns a
    :class:`~tunekit.losses.LossOutput` whose unit is the pair: ``loss_sum`` is the sum over the B pairs of

        -log sigmoid(chosen - rejected - margin) + center_coef * (chosen + rejected) ** 2

    and ``num_units`` = B. The runner divides by the number of pairs in the optimizer step, so the step's loss is
    the mean over pairs: the same number as TRL's RewardTrainer with ``center_rewards_coefficient=center_coef``, whose
    centering term is ``coef * mean((chosen + rejected) ** 2)`` over the batch (Eisenstein et al. 2023, eq. 2).

    Metrics are per-batch means (detached scalars): "accuracy" (chosen > rejected), "margin" (chosen - rejected,
    without the required margin), "reward_chosen", "reward_rejected".
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        # A [B, 1] head output against [B] would broadcast to [B, B] and train on the wrong pairs, silently.
        raise ValueError(f"chosen and rejected must both be [B]; got {tuple(chosen.shape)} and {tuple(rejected.shape)}")
    # Reward heads often run in bf16; log-sigmoid of a small difference needs fp32.
    chosen, rejected = chosen.float(), rejected.float()
    logits = chosen - rejected
    if margin is not None:
        if margin.shape != chosen.shape:
            raise ValueError(f"margin must be [B] like the rewards; got {tuple(margin.shape)}")
        logits = logits - margin.float()
    losses = -F.logsigmoid(logits)
    if center_coef:
        # Pins the rewards' scale, which the pairwise loss leaves free (it only sees differences).
        losses = losses + center_coef * (chosen + rejected) ** 2

    with torch.no_grad():
        metrics = {
            "accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).mean(),
            "reward_chosen": chosen.mean(),
            "reward_rejected": rejected.mean(),
        }
    return LossOutput(losses.sum(), torch.tensor(len(losses), device=losses.device), metrics)
