"""Policy-gradient losses: the clipped surrogate shared by PPO and GRPO, its aggregations, and the k3 KL estimator.

The losses return a :class:`~tunekit.losses.LossOutput` whose unit is the aggregation's (:func:`count_units`); a
recipe counts a prepared batch's ``num_items`` with the same function before the forward.
"""

from __future__ import annotations

from typing import Literal

import torch

from tunekit.losses import LossOutput
from tunekit.losses.reduce import masked_mean, masked_sum

Aggregation = Literal["token", "sequence", "dr_grpo"]
# Where the importance ratio lives: one per token (PPO, GRPO) or one per completion (GSPO).
RatioLevel = Literal["token", "sequence"]


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from tokens sampled by the policy: ``exp(d) - d - 1``, d = ref - logp.

    Any shape in, the same shape out. Unbiased, and never negative (unlike the plain ``-d``), which keeps a
    penalty on it well behaved.
    """
    log_ratio = ref_logps - logps
    # expm1 keeps precision when the two models agree closely, which is where a KL penalty spends most of its time.
    return torch.expm1(log_ratio) - log_ratio


def log_importance_ratio(
    logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor | None = None, level: RatioLevel = "token"
) -> torch.Tensor:
    """[B, T] log-probs under the current and the sampling policy -> the log importance ratio: [B, T] per token
    (``"token"``), or [B, 1] per completion (``"sequence"``, GSPO: Zheng et al. 2025).

    GSPO's ratio is the geometric mean of the token ratios over the completion's valid tokens (``mask`` [B, T]),
    ``exp(mean_t (logp_t - old_logp_t))``: length-normalised, so a long completion's ratio does not drift further
    from 1 than a short one's, and one odd token cannot clip a whole sequence alone. A row without a valid token
    gets log ratio 0. The gradient flows through every token's log-prob in the mean, as in TRL's GRPOTrainer with
    ``importance_sampling_level="sequence"``.
    """
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level != "sequence":
        raise ValueError(f"unknown importance ratio level {level!r}; expected 'token' or 'sequence'")
    if mask is None:
        raise ValueError("a sequence-level importance ratio needs the mask of valid completion tokens")
    m = mask.to(log_ratio.dtype)
    return ((log_ratio * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)).unsqueeze(1)


def clipped_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    mask: torch.Tensor | None = None,
    level: RatioLevel = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective, with separate lower and upper clip ranges ("clip-higher", DAPO).

    logps, old_logps: [B, T]; advantages: [B] (one per sequence, GRPO) or [B, T] (per token, PPO) ->
    ``(per_token_loss [B, T], is_clipped [B, T] bool)``.

        ratio = exp(logp - old_logp)          (level "sequence": exp(mean over the row's valid tokens), GSPO)
        loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

    ``is_clipped`` marks the tokens where the clipped term is the smaller one, i.e. where clipping took the
    gradient away: ratio above 1 + clip_high with A > 0, or below 1 - clip_low with A < 0. A ratio outside the
    range on the other side of 1 keeps its gradient (the min picks the unclipped term) and is not counted. At the
    sequence level the one ratio of a row, and so its clipping, holds for every token of it (``mask`` [B, T], the
    valid tokens, is then required; see :func:`log_importance_ratio`).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(log_importance_ratio(logps, old_logps, mask, level))
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token_loss = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    is_clipped = ((ratio > 1 + clip_high) & (advantages > 0)) | ((ratio < 1 - clip_low) & (advantages < 0))
    # A [B, 1] sequence ratio against [B] advantages gives [B, 1]: spread it over the row's tokens.
    return per_token_loss.expand_as(logps), is_clipped.expand_as(logps)


def count_units(mask: torch.Tensor, mode: Aggregation) -> torch.Tensor:
    """[B, T] mask of valid completion tokens -> [] int64, the number of units ``mode`` averages over.

    ``"token"``: the valid tokens; ``"sequence"`` and ``"dr_grpo"``: the B rows, those without a valid token
    included. The one rule for both the count a prepared batch carries (``num_items``, which the runner needs
    before the forward) and the count :func:`aggregate` returns with the loss.
    """
    if mode == "token":
        return mask.sum()
    if mode in ("sequence", "dr_grpo"):
        return torch.tensor(mask.shape[0], device=mask.device)
    raise ValueError(f"unknown aggregation {mode!r}; expected 'token', 'sequence' or 'dr_grpo'")


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, mode: Aggregation, max_tokens: int | None = None
) -> LossOutput:
    """Reduce a [B, T] per-token loss to ``loss_sum`` [] and ``num_units`` [] (no metrics) for one of three means.

    The runner computes ``sum(loss_sum) / sum(num_units)`` over the optimizer step, so each mode picks its unit
    (:func:`count_units`):

    - ``"token"`` (DAPO): unit = valid token. loss_sum = sum of all valid tokens' losses, num_units = their number.
      The step's loss is the mean over every valid token of the step, so long completions weigh more in total but
      every token weighs the same, whatever the micro-batch split.
    - ``"sequence"`` (original GRPO): unit = sequence. loss_sum = sum over sequences of each sequence's mean over
      its own valid tokens, num_units = B. The step's loss is the mean of per-sequence means. A row with no valid
      token still counts as a sequence (with loss 0), as in TRL.
    - ``"dr_grpo"`` (Dr. GRPO): unit = sequence. loss_sum = sum over sequences of each sequence's *summed* loss
      divided by the constant ``max_tokens`` (the maximum completion length), num_units = B. Dividing by a constant
      rather than by each length removes GRPO's bias towards long wrong answers.

    Each mode sums over its units and counts them, so cutting a batch into micro-batches (or processes) and adding
    up loss_sum and num_units gives exactly the whole batch's mean. Dividing inside each micro-batch would not: a
    micro-batch with fewer tokens or sequences would weigh as much as a full one.
    """
    num_units = count_units(mask, mode)
    mask = mask.to(per_token.dtype)
    if mode == "token":
        return LossOutput(masked_sum(per_token, mask), num_units)
    if mode == "sequence":
        return LossOutput(masked_mean(per_token, mask, dim=1).sum(), num_units)
    if not max_tokens or max_tokens < 1:
        raise ValueError("aggregation 'dr_grpo' needs max_tokens, the maximum completion length (a positive int)")
    return LossOutput(masked_sum(per_token, mask) / max_tokens, num_units)


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
    ratio_level: RatioLevel = "token",
) -> LossOutput:
    """GRPO: the clipped surrogate on the advantages, plus an optional k3 KL penalty to a reference model.

    logps, old_logps, mask, ref_logps: [B, T] over completion tokens; advantages: [B] or [B, T] -> a
    :class:`~tunekit.losses.LossOutput` reduced by :func:`aggregate` with ``aggregation`` and ``max_tokens``.

    Per token: ``clipped surrogate + kl_beta * k3_kl(logps, ref_logps)``, the ratio per token or, with
    ``ratio_level="sequence"``, one per completion (GSPO). Metrics (detached scalars): "clip_fraction" (the share
    of units whose gradient the clip removed) and "ratio_mean", over this batch's valid tokens at the token level
    and over its B completions at the sequence level (as TRL logs them); and "kl", the mean over valid tokens,
    whenever ``ref_logps`` is given (even with kl_beta = 0, so the drift can be watched without penalising it).
    """
    per_token, is_clipped = clipped_surrogate(
        logps, old_logps, advantages, clip_low, clip_high, mask=mask, level=ratio_level
    )
    if ratio_level == "sequence":
        ratio = torch.exp(log_importance_ratio(logps, old_logps, mask, "sequence"))
        # With one advantage per completion the clipping is one decision per completion; with per-token advantages
        # (REINFORCE++) it can differ along a row, so it is counted per token.
        clipped = is_clipped[:, 0].float().mean() if advantages.dim() == 1 else masked_mean(is_clipped.float(), mask)
        metrics = {"clip_fraction": clipped.detach(), "ratio_mean": ratio.mean().detach()}
    else:
        metrics = {
            "clip_fraction": masked_mean(is_clipped.float(), mask).detach(),
            "ratio_mean": masked_mean(torch.exp(logps - old_logps), mask).detach(),
        }
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        metrics["kl"] = masked_mean(kl, mask).detach()
        if kl_beta != 0.0:
            per_token = per_token + kl_beta * kl
    reduced = aggregate(per_token, mask, aggregation, max_tokens)
    return LossOutput(reduced.loss_sum, reduced.num_units, metrics)


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
) -> LossOutput:
    """Token-level PPO: clipped policy loss + value_coef * clipped value loss - entropy_coef * entropy.

    All inputs [B, T] (advantages and returns from :func:`tunekit.losses.advantages.gae`, already whitened if
    wanted) -> a :class:`~tunekit.losses.LossOutput` whose units are the valid tokens, so the step's loss is a mean
    over all its valid tokens.

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
    reduced = aggregate(per_token, mask, "token")
    metrics = {
        "policy_loss": masked_mean(policy_loss, mask).detach(),
        "value_loss": masked_mean(value_loss, mask).detach(),
        "clip_fraction": masked_mean(is_clipped.float(), mask).detach(),
        "value_clip_fraction": masked_mean((clipped_value_error > value_error).float(), mask).detach(),
        "approx_kl": masked_mean(k3_kl(old_logps, logps), mask).detach(),
    }
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy, mask).detach()
    return LossOutput(reduced.loss_sum, reduced.num_units, metrics)
