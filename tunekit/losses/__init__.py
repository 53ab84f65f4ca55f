"""Pure loss functions: tensors in, one :class:`LossOutput` out. Nothing here imports accelerate or transformers.

Every loss a recipe calls (:func:`~tunekit.losses.sft.token_cross_entropy`, :func:`~tunekit.losses.sft.
label_cross_entropy`, :func:`~tunekit.losses.reward.bradley_terry_loss`, :func:`~tunekit.losses.preference.
preference_loss`, :func:`~tunekit.losses.policy.grpo_loss`, :func:`~tunekit.losses.policy.ppo_losses`) returns

- ``loss_sum`` []: the loss summed over the batch's *units*: label tokens (SFT), pairs (reward model, DPO family),
  completions or completion tokens (GRPO, by its aggregation), completion tokens (PPO);
- ``num_units`` [] (an integer count): how many units that sum covers;
- ``metrics``: detached scalars, each a mean over this batch (each loss says over what). Their names are the ones
  metrics.jsonl logs.

The runner divides the step's summed ``loss_sum`` (all micro-batches, all processes) by the step's total units, so
a step's loss is the mean over its units however the step is split; it weights each batch's metrics by its units.
It knows that total before the forward, from each batch's ``num_items``, counted by the same rule as the loss
counts ``num_units`` (the collators for SFT, DPO and reward; :func:`tunekit.losses.policy.count_units` for GRPO
and PPO), and :func:`tunekit.train.spec.step_result` checks that the two agree.

Building blocks (``clipped_surrogate``, the per-type terms in ``PREFERENCE_LOSSES``,
the reductions in :mod:`tunekit.losses.reduce`) return per-element tensors, as their docstrings say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LossOutput:
    """What every loss returns (see the module docstring)."""

    loss_sum: torch.Tensor  # [] summed over the batch's units
    num_units: torch.Tensor  # [] how many units loss_sum covers
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached per-batch means

    def mean(self) -> torch.Tensor:
        """[] the batch's own mean loss, ``loss_sum / num_units`` (0 for a batch without units)."""
        return self.loss_sum / self.num_units.clamp(min=1)
