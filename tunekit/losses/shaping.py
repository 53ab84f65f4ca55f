"""From sequence scores to what the policy losses train on.

PPO: per-token rewards shaped by a KL penalty to the reference (:func:`kl_penalized_rewards`), and the adaptive KL
coefficient's update (:func:`adaptive_kl_coef`). GRPO: the reward changes and the loss mask that handle truncated
completions and groups without a learning signal (:func:`grpo_rewards_and_keep`).
"""

from __future__ import annotations

from typing import Literal

import torch

from tunekit.losses.advantages import equal_reward_groups

Truncation = Literal["keep", "mask", "penalize"]

# The largest relative change of the KL coefficient's error term per update (Ziegler et al. 2019).
_MAX_KL_ERROR = 0.2


def kl_penalized_rewards(
    scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token rewards: a KL penalty on every completion token, plus the sequence score on the last one.

    scores: [B] sequence scores; logps, ref_logps: [B, T] the policy's (at sampling time) and the reference's
    log-probs of the sampled tokens; mask: [B, T] bool, true on completion tokens, which sit left of any padding
    -> ``(rewards [B, T], kl [B, T])``, both 0 off the mask except for the score (see below):

        kl[b, t]      = (logps[b, t] - ref_logps[b, t]) * mask[b, t]
        rewards[b, t] = -kl_coef * kl[b, t]   + scores[b] at the row's last completion token

    kl is the per-token estimate of KL(policy || ref) from the policy's own samples; a row's sum is its
    completion's KL, which the adaptive controller steers. A row without a completion token gets its score at
    position 0.
    """
    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    last = mask.long().cumsum(-1).argmax(-1)  # argmax returns the first of equal maxima: the last masked position
    rewards[torch.arange(len(last), device=rewards.device), last] += scores
    return rewards, kl


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, completions: float) -> float:
    """The KL coefficient after one rollout batch, by proportional control on the clipped relative error.

    kl: the batch's mean KL per completion (nats, summed over its tokens); completions: how many the batch held
    (every process's). With ``error = clip(kl / target - 1, -0.2, 0.2)``::

        coef' = coef * (1 + error * completions / horizon)

    so the coefficient closes the gap to ``target`` over about ``horizon`` completions, and one noisy batch cannot
    move it by more than 20% x completions / horizon.
    """
    error = min(max(kl / target - 1.0, -_MAX_KL_ERROR), _MAX_KL_ERROR)
    return coef * (1.0 + error * completions / horizon)


def grpo_rewards_and_keep(
    rewards: torch.Tensor,
    truncated: torch.Tensor,
    group_size: int,
    *,
    truncation: Truncation = "keep",
    truncation_penalty: float = 0.0,
    skip_equal_groups: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's rewards after its truncation rule, and which completions the loss trains on.

    rewards: [N * G] scores, the G completions of each prompt next to each other; truncated: [N * G] bool, the
    completions that hit the token limit -> ``(rewards [N * G], keep [N * G] bool)``.

    - ``truncation="penalize"`` adds ``truncation_penalty`` to each truncated completion's reward (before the
      group advantages, so a truncated answer is worse than its finished siblings);
    - ``truncation="mask"`` leaves the rewards alone (truncated completions still belong to their group's baseline)
      but keeps them out of the loss;
    - ``skip_equal_groups`` keeps out every completion of a group whose rewards (after any penalty) are all equal:
      its advantages are 0, so it would cost a forward and backward for no policy gradient.
    """
    if truncation == "penalize":
        rewards = rewards + truncation_penalty * truncated.float()
    keep = torch.ones(len(rewards), dtype=torch.bool, device=rewards.device)
    if skip_equal_groups:
        keep = ~equal_reward_groups(rewards, group_size).repeat_interleave(group_size)
    if truncation == "mask":
        keep &= ~truncated
    return rewards, keep
