"""Advantage estimators: group-relative advantages (GRPO, Dr. GRPO) and generalised advantage estimation (PPO)."""

from __future__ import annotations

import torch


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N * G] -> [N, G], with a readable error when the rewards do not split into whole groups."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"expected a flat tensor of whole groups of {group_size} rewards, got shape {tuple(rewards.shape)}"
        )
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Advantage of each completion relative to the other completions of the same prompt.

    rewards: [N * G], the G completions of each prompt next to each other -> advantages [N * G].

    ``reward - group mean``, divided by ``group std + eps`` when ``scale_by_std`` (GRPO) and left unscaled
    otherwise (Dr. GRPO, which argues the division over-weights prompts that are nearly always or never solved).
    The std is the *unbiased* one (divides by G - 1) and eps is added to the std, not to the variance: both as in
    TRL's GRPOTrainer, so the numbers agree with it. A group of one has no baseline to compare with, so its
    advantage is 0.
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std and group_size > 1:
        centred = centred / (grouped.std(dim=1, keepdim=True, correction=1) + eps)
    return centred.reshape(-1)


def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N * G] rewards -> [N] bool, true for prompts whose G completions all scored the same.

    Such a group has zero advantage everywhere, so it adds no policy gradient (only KL, if any) while still costing
    a forward and backward pass; a recipe may drop it or log how often it happens. "The same" means equal to the
    group's first reward within ``torch.isclose``'s default tolerances.
    """
    grouped = _grouped(rewards, group_size)
    return torch.isclose(grouped, grouped[:, :1]).all(dim=1)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the valid tokens of right-padded completions.

    rewards, values, mask: [B, T] (mask 1 on completion tokens, 0 on the padding after them) ->
    ``(advantages [B, T], returns [B, T])``, both 0 where the mask is 0.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                       (the value target)

    with V_{t+1} = A_{t+1} = 0 after the last valid token: the completion ends there, and whatever the value head
    says about padding must not leak into the estimate. (A 0 inside a row therefore also ends the episode there.)
    Call it on detached rollout tensors; it is a target, not something to differentiate through.
    """
    mask = mask.to(values.dtype)
    next_value = values.new_zeros(values.shape[0])
    next_advantage = values.new_zeros(values.shape[0])
    columns = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Multiplying by the mask both zeroes the padded positions and hands zeros to the token before them.
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        columns.append(next_advantage)
    advantages = torch.stack(columns[::-1], dim=1)
    return advantages, (advantages + values) * mask
