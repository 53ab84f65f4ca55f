"""TRL's GRPO loss as the oracle for tunekit's: GRPOTrainer._compute_loss run on a stand-in trainer."""

from __future__ import annotations

import types
from collections import defaultdict

import torch


def trl_grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    loss_type: str,
    level: str = "token",
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    max_len: int | None = None,
) -> tuple[torch.Tensor, float, float | None]:
    """TRL 1.16's GRPOTrainer._compute_loss on [B, T] log-probs -> (loss, clip ratio, kl metric or None at beta 0).

    Only the model forward (_get_per_token_logps_and_entropies) is stubbed, to return ``logps``; the ratio (token or
    sequence ``level``), clipping, KL penalty and loss normalisation are TRL's own code. ``max_len`` (default: T) is
    the completion budget dr_grpo divides by.
    """
    from trl.trainer.grpo_trainer import GRPOTrainer

    metrics = {"train": defaultdict(list)}
    ns = types.SimpleNamespace
    trainer = ns(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logps, torch.zeros_like(logps), None),
        accelerator=ns(num_processes=1, gather=lambda t: t, reduce=lambda t, reduction: t),
        model=ns(training=True),
        args=ns(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        current_gradient_accumulation_steps=1,
        max_completion_length=max_len if max_len is not None else logps.shape[1],
        _entropy_bonus_enabled=False,
        _metrics=metrics,
    )
    batch, width = logps.shape
    inputs = {
        "prompt_ids": torch.zeros(batch, 2, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 2, dtype=torch.long),
        "completion_ids": torch.zeros(batch, width, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old_logps,
        "ref_per_token_logps": ref_logps,
        "num_items_in_batch": mask.sum(),
    }
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    kl = metrics["train"]["kl"][-1] if beta else None
    return loss, metrics["train"]["clip_ratio/region_mean"][-1], kl
