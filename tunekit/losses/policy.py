"""Policy-gradient losses: the clipped surrogate shared by PPO and GRPO, its aggregations, and the k3 KL estimator.

Every loss returns ``(loss_sum, num_items, metrics)``. The runner divides ``loss_sum`` by ``num_items`` summed over
the whole optimizer step (all micro-batches, all processes), so a loss is a mean over the step's units whatever the
micro-batch split. Metrics are means over this batch's units; the runner averages them with ``num_items`` weights.
"""

from __future__ import annotations

from typing import Literal

import torch

from tunekit.losses.reduce import masked_mean, masked_sum

Aggregation = Literal["token", "sequence", "dr_grpo"]


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from tokens sampled by the policy: ``exp(d) - d - 1``, d = ref - logp.

    Any shape in, the same shape out. Unbiased, and never negative (unlike the plain ``-d``), which keeps a
    penalty on it well behaved.
    """
    log_ratio = ref_logps - logps
    # expm1 keeps precision when the two models agree closely, which is where a KL penalty spends most of its time.
    return torch.expm1(log_ratio) - log_ratio


def clipped_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective, with separate lower and upper clip ranges ("clip-higher", DAPO).

    logps, old_logps: [B, T]; advantages: [B] (one per sequence, GRPO) or [B, T] (per token, PPO) ->
    ``(per_token_loss [B, T], is_clipped [B, T] bool)``.

        ratio = exp(logp - old_logp)
        loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

    ``is_clipped`` marks the tokens where the clipped term is the smaller one, i.e. where clipping took the
    gradient away: ratio above 1 + clip_high with A > 0, or below 1 - clip_low with A < 0. A ratio outside the
    range on the other side of 1 keeps its gradient (the min picks the unclipped term) and is not counted.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token_loss = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    is_clipped = ((ratio > 1 + clip_high) & (advantages > 0)) | ((ratio < 1 - clip_low) & (advantages < 0))
    return per_token_loss, is_clipped


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, mode: Aggregation, max_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce a [B, T] per-token loss to ``(loss_sum, num_items)``, both scalars, for one of three standard means.

    The runner computes ``sum(loss_sum) / sum(num_items)`` over the optimizer step, so each mode picks its unit:

    - ``"token"`` (DAPO): unit = valid token. loss_sum = sum of all valid tokens' losses, num_items = their number.
      The step's loss is the mean over every valid token of the step, so long completions weigh more in total but
      every token weighs the same, whatever the micro-batch split.
    - ``"sequence"`` (original GRPO): unit = sequence. loss_sum = sum over sequences of each sequence's mean over
      its own valid tokens, num_items = B. The step's loss is the mean of per-sequence means. A row with no valid
      token still counts as a sequence (with loss 0), as in TRL.
    - ``"dr_grpo"`` (Dr. GRPO): unit = sequence. loss_sum = sum over sequences of each sequence's *summed* loss
      divided by the constant ``max_tokens`` (the maximum completion length), num_items = B. Dividing by a constant
      rather than by each length removes GRPO's bias towards long wrong answers.

    Each mode sums over its units and counts them, so cutting a batch into micro-batches (or processes) and adding
    up loss_sum and num_items gives exactly the whole batch's mean. Dividing inside each micro-batch would not: a
    micro-batch with fewer tokens or sequences would weigh as much as a full one.
    """
    mask = mask.to(per_token.dtype)
    if mode == "token":
        return masked_sum(per_token, mask), mask.sum()
    num_sequences = torch.tensor(float(per_token.shape[0]), dtype=per_token.dtype, device=per_token.device)
    if mode == "sequence":
        return masked_mean(per_token, mask, dim=1).sum(), num_sequences
    if mode == "dr_grpo":
        if not max_tokens or max_tokens < 1:
            raise ValueError("aggregation 'dr_grpo' needs max_tokens, the maximum completion length (a positive int)")
        return masked_sum(per_token, mask) / max_tokens, num_sequences
    raise ValueError(f"unknown aggregation {mode!r}; expected 'token', 'sequence' or 'dr_grpo'")


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    ref_logps: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    aggregation: Aggregation = "token",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO: the clipped surrogate on group advantages, plus an optional k3 KL penalty to a reference model.

    logps, old_logps, mask, ref_logps: [B, T] over completion tokens; advantages: [B] or [B, T] ->
    ``(loss_sum, num_items, metrics)``, reduced by :func:`aggregate` with ``aggregation`` and ``max_tokens``.

    Per token: ``clipped surrogate + kl_beta * k3_kl(logps, ref_logps)``. Metrics (detached scalars, means over
    this batch's valid tokens): "clip_fraction" (tokens whose gradient the clip removed), "ratio_mean", and "kl"
    whenever ``ref_logps`` is given (even with kl_beta = 0, so the drift can be watched without penalising it).
    """
    per_token, is_clipped = clipped_surrogate(logps, old_logps, advantages, clip_low, clip_high)
    metrics = {
        "clip_fraction": masked_mean(is_clipped.float(), mask).detach(),
        "ratio_mean": masked_mean(torch.exp(logps - old_logps), mask).detach(),
    }
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        metrics["kl"] = masked_mean(kl, mask).detach()
        if kl_beta != 0.0:
            per_token = per_token + kl_beta * kl
    loss_sum, num_items = aggregate(per_token, mask, aggregation, max_tokens)
    return loss_sum, num_items, metrics


def ppo_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    value_clip: float,
    value_coef: float,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level PPO: clipped policy loss + value_coef * clipped value loss - entropy_coef * entropy.

    All inputs [B, T] (advantages and returns from :func:`tunekit.losses.advantages.gae`, already whitened if
    wanted) -> ``(loss_sum, num_items, metrics)`` with num_items = valid tokens, so the step's loss is a mean over
    all its valid tokens.

    The value loss is ``0.5 * max((v - R)^2, (clip(v, old_v - value_clip, old_v + value_clip) - R)^2)``: the value
    head may not move further than ``value_clip`` from its rollout value for free, the same trust region the
    policy gets. Metrics (detached, means over valid tokens): "policy_loss", "value_loss", "clip_fraction",
    "value_clip_fraction" (tokens where the clipped value error is the larger, so the one used), "approx_kl" (the
    k3 estimate of KL(old || new), ``ratio - 1 - log ratio``, never negative), and "entropy" when given.
    """
    policy_loss, is_clipped = clipped_surrogate(logps, old_logps, advantages, clip, clip)
    clipped_values = torch.clamp(values, old_values - value_clip, old_values + value_clip)
    value_error = (values - returns) ** 2
    clipped_value_error = (clipped_values - returns) ** 2
    value_loss = 0.5 * torch.maximum(value_error, clipped_value_error)
    per_token = policy_loss + value_coef * value_loss
    if entropy is not None:
        per_token = per_token - entropy_coef * entropy
    loss_sum, num_items = aggregate(per_token, mask, "token")
    metrics = {
        "policy_loss": masked_mean(policy_loss, mask).detach(),
        "value_loss": masked_mean(value_loss, mask).detach(),
        "clip_fraction": masked_mean(is_clipped.float(), mask).detach(),
        "value_clip_fraction": masked_mean((clipped_value_error > value_error).float(), mask).detach(),
        "approx_kl": masked_mean(k3_kl(old_logps, logps), mask).detach(),
    }
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy, mask).detach()
    return loss_sum, num_items, metrics
