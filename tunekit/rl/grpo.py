"""GRPO's two hooks for the runner: ``prepare`` turns prompts into scored rollouts, ``step`` takes the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from tunekit.errors import require
from tunekit.losses.advantages import (
    group_advantages,
    normalize_together,
    reinforce_pp_returns,
    rloo_advantages,
    sequence_kl_penalty,
)
from tunekit.losses.policy import Aggregation, RatioLevel, count_units, grpo_loss
from tunekit.losses.shaping import Truncation, grpo_rewards_and_keep
from tunekit.models.logprobs import token_logps
from tunekit.models.reference import ReferencePolicy
from tunekit.rl.evaluation import sampled_and_greedy_means
from tunekit.rl.reward_calls import compute_rewards
from tunekit.rl.rollout import PromptExample, Rollout, RolloutFn, SamplingConfig, generate_rollout
from tunekit.rl.samples import SampleLog
from tunekit.rl.task import TaskMetric
from tunekit.rl.tool_rollout import tool_metrics
from tunekit.train.engines import all_reduce_sum
from tunekit.train.spec import step_result

Advantage = Literal["group", "rloo", "reinforce_pp"]


@dataclass
class GRPOLossConfig:
    # How rewards become advantages: group (GRPO: minus the mean of the prompt's group, over its std unless
    # scale_rewards is false), rloo (minus the mean of the prompt's other completions), reinforce_pp (REINFORCE++: the
    # token-level return with the KL in the reward, normalised over the whole step's batch). See docs/grpo.md.
    advantage: Advantage = "group"
    # token: one importance ratio per token (GRPO); sequence: one per completion, the geometric mean of its token
    # ratios, clipped as a whole (GSPO). The two differ only once the policy moves away from the sampling policy
    # (passes > 1).
    importance_sampling_level: RatioLevel = "token"
    # advantage=group only: divide advantages by the group's reward std (GRPO); false gives Dr. GRPO's unscaled
    # advantages.
    scale_rewards: bool = True
    # token: mean over all completion tokens of the step; sequence: per-completion mean, then mean (GRPO);
    # dr_grpo: per-completion sum over sampling.max_new_tokens, then mean.
    aggregation: Aggregation = "sequence"
    # Lower clip range of the policy ratio: a token with a negative advantage stops pushing once its ratio falls below 1
    # - clip_low.
    clip_low: float = 0.2
    # Upper clip range; larger than clip_low is "clip-higher" (DAPO).
    clip_high: float = 0.28
    # Weight of the KL to the reference policy (0: no reference pass at all). advantage=group: a k3 penalty in the loss;
    # rloo: beta x the completion's summed k1 estimate taken off its reward; reinforce_pp: beta x each token's k1
    # estimate taken off that token's reward.
    kl_beta: float = 0.04
    # Optimizer steps on each batch of rollouts; the log-probs at sampling time stay the "old" policy.
    passes: int = 1
    # Drop groups whose completions all got the same reward (zero advantage, no learning signal).
    skip_equal_groups: bool = False
    # Completions that hit max_new_tokens: keep, mask (no loss), or penalize (truncation_penalty added).
    truncated: Truncation = "keep"
    # Added to the reward of each truncated completion when truncated is penalize, before advantages (negative: a
    # penalty).
    truncation_penalty: float = -1.0

    def __post_init__(self) -> None:
        require(self.passes >= 1, "passes", f"must be at least 1, got {self.passes}")
        # Ignoring it silently would let a run believe it trained without the std division.
        require(
            self.scale_rewards or self.advantage == "group",
            "scale_rewards",
            f"is used only by advantage=group (GRPO's std division), not {self.advantage}",
        )

    @property
    def kl_in_reward(self) -> bool:
        """Whether the KL to the reference comes off the rewards (RLOO, REINFORCE++) instead of adding to the loss."""
        return self.advantage != "group" and self.kl_beta > 0


class GRPOTrainer:
    """The recipe's hooks for the runner: ``prepare`` (rollouts and advantages), ``step`` (the loss), and
    ``evaluate`` (held-out rewards and task metric).

    ``loss`` and ``sampling`` are the recipe's sections of those names; ``seed`` seeds the held-out sampling and
    ``eval_batch_size`` prompts are generated for at a time there. GRPO carries nothing from step to step: its
    ``state_dict`` is empty.
    """

    def __init__(
        self,
        loss: GRPOLossConfig,
        sampling: SamplingConfig,
        *,
        seed: int,
        eval_batch_size: int,
        tokenizer: Any,
        reference: ReferencePolicy | None,
        rewards: list,
        samples: SampleLog,
        task: TaskMetric | None = None,
        generate: RolloutFn | None = None,
    ) -> None:
        self.loss = loss
        self.sampling = sampling
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.tokenizer = tokenizer
        self.reference = reference
        self.rewards = rewards
        self.samples = samples
        self.task = task
        # Makes each batch's rollouts: generate_rollout, or a ToolRollouts that lets the policy call tools.
        self.generate = generate or generate_rollout

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def score(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return compute_rewards(self.rewards, rollout.prompts, rollout.completions, rollout.columns)

    def prepare(self, model: torch.nn.Module, batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """Prompts -> scored rollouts with advantages, old and reference log-probs, and their unit counts."""
        prepared = [self._rollout_tensors(model, batch, step, k) for k, batch in enumerate(batches)]
        if self.loss.advantage == "reinforce_pp":
            # REINFORCE++ normalises over the whole step: every micro-batch here and every process's share.
            masks = [t["labels"][:, 1:] != -100 for t in prepared]
            returns = [
                reinforce_pp_returns(t.pop("rewards"), m, t.pop("reward_kl", None), self.loss.kl_beta)
                for t, m in zip(prepared, masks, strict=True)
            ]
            for tensors, advantages in zip(prepared, normalize_together(returns, masks, all_reduce_sum), strict=True):
                tensors["advantages"] = advantages
        return prepared

    def _rollout_tensors(self, model: torch.nn.Module, batch: dict[str, Any], step: int, k: int) -> dict[str, Any]:
        """One micro-batch of prompts -> its rollout's tensors, with advantages unless the estimator needs the whole
        step (REINFORCE++: then the rewards [B] and the per-token k1 KL [B, T - 1] are left for :meth:`prepare`)."""
        loss = self.loss
        group = self.sampling.num_generations
        rollout = self.generate(model, self.tokenizer, batch["prompts"], self.sampling)
        total, per_source = self.score(rollout)
        total, keep = grpo_rewards_and_keep(
            total,
            rollout.truncated,
            group,
            truncation=loss.truncated,
            truncation_penalty=loss.truncation_penalty,
            skip_equal_groups=loss.skip_equal_groups,
        )
        tensors = rollout.batch()
        tensors["labels"] = torch.where(keep[:, None], tensors["labels"], -100)
        device = next(model.parameters()).device
        tensors = {name: t.to(device) for name, t in tensors.items()}
        mask = tensors["labels"][:, 1:] != -100
        sampling_logps = None
        with torch.no_grad():
            if loss.passes > 1 or loss.kl_in_reward:
                sampling_logps = token_logps(model, tensors)[0]
            if loss.passes > 1:
                tensors["old_logps"] = sampling_logps
            if self.reference is not None and loss.kl_beta > 0:
                tensors["ref_logps"] = self.reference.run(model, lambda m, t=tensors: token_logps(m, t)[0])
        rewards = total.to(device)
        if loss.advantage == "group":
            tensors["advantages"] = group_advantages(rewards, group, scale_by_std=loss.scale_rewards)
        elif loss.advantage == "rloo":
            if loss.kl_in_reward:
                rewards = rewards - loss.kl_beta * sequence_kl_penalty(sampling_logps, tensors["ref_logps"], mask)
            tensors["advantages"] = rloo_advantages(rewards, group)
        else:
            tensors["rewards"] = rewards
            if loss.kl_in_reward:
                tensors["reward_kl"] = sampling_logps - tensors["ref_logps"]
        tensors["num_items"] = count_units(mask, loss.aggregation)
        tensors["metrics"] = self._rollout_metrics(rollout, total, per_source)
        written = 2 * group if k == 0 and self.samples.due(step) else 0
        if written:
            self.samples.write(step, rollout, total, rows=written, score_name="reward")
        self.samples.write_tool_failures(step, rollout, total, score_name="reward", after=written)
        return tensors

    def step(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logps, mask, entropy = token_logps(model, batch, entropy=True)
        old = batch.get("old_logps", logps.detach())
        output = grpo_loss(
            logps,
            old,
            batch["advantages"],
            mask,
            clip_low=self.loss.clip_low,
            clip_high=self.loss.clip_high,
            ref_logps=batch.get("ref_logps"),
            # Where the KL is in the reward already, the reference log-probs only feed the logged "kl".
            kl_beta=0.0 if self.loss.kl_in_reward else self.loss.kl_beta,
            aggregation=self.loss.aggregation,
            max_tokens=self.sampling.max_new_tokens,
            ratio_level=self.loss.importance_sampling_level,
        )
        loss_sum, metrics = step_result(output, batch)
        metrics["entropy"] = (entropy.sum() / mask.sum().clamp(min=1)).detach()
        return loss_sum, {**metrics, **batch["metrics"]}

    def _rollout_metrics(self, rollout: Rollout, total: torch.Tensor, per_source: dict[str, torch.Tensor]) -> dict:
        metrics = {
            "reward": total.mean().item(),
            "reward_std": total.std().item() if len(total) > 1 else 0.0,
            "completion_length": rollout.completion_lengths.float().mean().item(),
            "truncated_fraction": rollout.truncated.float().mean().item(),
            **tool_metrics(rollout),
        }
        for name, values in per_source.items():
            metrics[f"rewards/{name}"] = values.mean().item()
            metrics[f"rewards/{name}_std"] = values.std().item() if len(values) > 1 else 0.0
        return metrics

    def evaluate(self, model: torch.nn.Module, prompts: list[PromptExample]) -> dict[str, float]:
        """Held-out mean reward, in total and per source, and the task metric (see :mod:`tunekit.rl.task`): of the
        policy's samples (the quantity GRPO raises), ``sampling.num_generations`` per prompt at the training
        temperature, and of one greedy answer per prompt. Evaluating does not change the training run.
        """
        greedy = SamplingConfig(
            num_generations=1,
            max_new_tokens=self.sampling.max_new_tokens,
            temperature=0,
            stop_strings=self.sampling.stop_strings,
        )
        return sampled_and_greedy_means(
            model,
            self.tokenizer,
            prompts,
            self.sampling,
            greedy,
            self.eval_batch_size,
            self.seed,
            self._measure,
            self.generate,
        )

    def _measure(self, rollout: Rollout, sampled: bool) -> dict[str, torch.Tensor]:
        total, per_source = self.score(rollout)
        measures = {"reward": total, **{f"rewards/{name}": values for name, values in per_source.items()}}
        if self.task is not None:
            measures[self.task.key] = self.task.score(rollout)
        return measures
