"""Advantage estimators: group-relative (GRPO, Dr. GRPO), leave-one-out (RLOO), REINFORCE++ and generalised
advantage estimation (PPO).

The critic-free estimators take the rewards of N prompts x G completions, laid out [N * G] with each prompt's G
completions next to each other; GAE takes per-token rewards and a value head's values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tunekit.losses.reduce import masked_whiten


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


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each completion's reward minus the mean of the *other* G - 1
    completions of its prompt.

    rewards: [N * G] -> advantages [N * G]. ``A_i = r_i - (sum_j r_j - r_i) / (G - 1)``, which equals
    ``G / (G - 1) * (r_i - mean)``: GRPO's centring without the std division, scaled up a little. The baseline does
    not contain the completion's own reward, so the estimate of the policy gradient stays unbiased. A group of one
    has no other completion to compare with: its advantage is 0. Numbers match TRL's RLOOTrainer with
    ``normalize_advantages=False`` (its default); fold a KL penalty into ``rewards`` first, as RLOO does.
    """
    grouped = _grouped(rewards, group_size)
    if group_size == 1:
        return torch.zeros_like(rewards)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def sequence_kl_penalty(old_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] sampling-time and reference log-probs, [B, T] mask -> [B] the k1 KL estimate of each completion,
    ``sum_t (old_logp_t - ref_logp_t)`` over its valid tokens: the term RLOO subtracts from the reward (times beta).

    k1 can be negative token by token; summed over a sampled completion it is an unbiased estimate of the sequence's
    KL(policy || ref). TRL's RLOOTrainer uses the same estimate.
    """
    return ((old_logps - ref_logps) * mask.to(old_logps.dtype)).sum(dim=1)


def reinforce_pp_returns(
    rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025) before its normalisation: the undiscounted return-to-go of a token-level reward.

    rewards: [B] one score per completion; mask: [B, T] valid completion tokens (right-padded); kl: [B, T] the
    per-token k1 estimate ``old_logp - ref_logp`` (None: no penalty) -> returns [B, T], 0 where the mask is 0.

        r_t = -kl_coef * kl_t + (score if t is the completion's last valid token else 0)
        G_t = sum_{s >= t} r_s

    The KL is part of the reward rather than of the loss, so each token is charged for the drift of the tokens
    after it too. A row without a valid token gets zeros (its score has no token to land on).
    """
    m = mask.to(rewards.dtype)
    token_rewards = torch.zeros_like(m)
    if kl is not None and kl_coef != 0.0:
        token_rewards = token_rewards - kl_coef * kl.to(rewards.dtype) * m
    # The last valid token of each row: the index of the largest position among the valid ones.
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m.bool(), positions, -1).max(dim=1).values
    has_token = last >= 0
    rows = torch.arange(m.shape[0], device=m.device)[has_token]
    token_rewards[rows, last[has_token]] += rewards[has_token]
    # Reverse cumulative sum: G_t = sum over s >= t.
    returns = token_rewards.flip(1).cumsum(1).flip(1)
    return returns * m


def normalize_together(
    values: list[torch.Tensor],
    masks: list[torch.Tensor],
    sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """REINFORCE++'s global batch normalisation: whiten several [B_k, T_k] tensors with one mean and std taken over
    the valid entries of all of them (``masks`` [B_k, T_k]), and of every process's when ``sum_across`` sums over
    processes (see :func:`tunekit.losses.reduce.masked_whiten`). Returns each tensor whitened, 0 where its mask is 0.

    The micro-batches of one optimizer step (different widths) are normalised as one batch, so the advantages do
    not depend on how the step is split.
    """
    flat = torch.cat([v[m.bool()] for v, m in zip(values, masks, strict=True)])
    whitened = masked_whiten(flat, torch.ones_like(flat), sum_across=sum_across)
    out, start = [], 0
    for v, m in zip(values, masks, strict=True):
        result = torch.zeros_like(v)
        n = int(m.bool().sum())
        result[m.bool()] = whitened[start : start + n]
        start += n
        out.append(result)
    return out


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
    """Generalised advantage estimation over the policy's tokens of right-padded completions.

    rewards, values, mask: [B, T] (mask 1 on the policy's tokens, 0 elsewhere) -> ``(advantages [B, T],
    returns [B, T])``, both 0 where the mask is 0. Over a row's masked tokens t_1 < t_2 < ... < t_n:

        delta_i = r_{t_i} + gamma * V_{t_{i+1}} - V_{t_i}
        A_{t_i} = delta_i + gamma * lam * A_{t_{i+1}}
        R_{t_i} = A_{t_i} + V_{t_i}                   (the value target)

    with V = A = 0 after t_n: the completion ends there, and whatever the value head says about padding must not
    leak into the estimate. Unmasked tokens *between* masked ones (the tool messages of a multi-turn rollout, which
    the environment wrote, not the policy) are stepped over rather than ending the episode: the state after a tool
    call is valued at the policy's next token, so the final score's credit reaches the turn that made the call.
    Call it on detached rollout tensors; it is a target, not something to differentiate through.
    """
    valid = mask.bool()
    # Each row's masked tokens gathered to its front, in order (a stable sort of "not masked" puts them first), so
    # that the recursion below runs over contiguous episodes; the results are scattered back to their columns.
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    rewards, values, steps = rewards.gather(1, order), values.gather(1, order), valid.gather(1, order)
    steps = steps.to(values.dtype)
    next_value = values.new_zeros(values.shape[0])
    next_advantage = values.new_zeros(values.shape[0])
    columns = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Multiplying by the mask both zeroes the padded positions and hands zeros to the token before them.
        next_advantage = (delta + gamma * lam * next_advantage) * steps[:, t]
        next_value = values[:, t] * steps[:, t]
        columns.append(next_advantage)
    compact = torch.stack(columns[::-1], dim=1)
    advantages = torch.zeros_like(compact).scatter(1, order, compact)
    returns = torch.zeros_like(compact).scatter(1, order, (compact + values) * steps)
    return advantages, returns
