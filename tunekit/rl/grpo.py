"""GRPO's two hooks for the runner: ``prepare`` turns prompts into scored rollouts, ``step`` takes the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunekit.errors import require
from tunekit.losses.advantages import group_advantages
from tunekit.losses.policy import Aggregation, count_units, grpo_loss
from tunekit.losses.shaping import Truncation, grpo_rewards_and_keep
from tunekit.models.logprobs import token_logps
from tunekit.models.reference import ReferencePolicy
from tunekit.rl.evaluation import sampled_and_greedy_means
from tunekit.rl.reward_calls import compute_rewards
from tunekit.rl.rollout import PromptExample, Rollout, SamplingConfig, generate_rollout
from tunekit.rl.samples import SampleLog
from tunekit.rl.task import TaskMetric
from tunekit.train.spec import step_result


@dataclass
class GRPOLossConfig:
    # Divide advantages by the group's reward std (GRPO); false gives Dr. GRPO's unscaled advantages.
    scale_rewards: bool = True
    # token: mean over all completion tokens of the step; sequence: per-completion mean, then mean (GRPO);
    # dr_grpo: per-completion sum over sampling.max_new_tokens, then mean.
    aggregation: Aggregation = "sequence"
    # Lower clip range of the policy ratio: a token with a negative advantage stops pushing once its ratio falls below 1
    # - clip_low.
    clip_low: float = 0.2
    # Upper clip range; larger than clip_low is "clip-higher" (DAPO).
    clip_high: float = 0.28
    # Weight of the k3 KL penalty to the reference policy (0: no reference pass at all).
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

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def score(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return compute_rewards(self.rewards, rollout.prompts, rollout.completions, rollout.columns)

    def prepare(self, model: torch.nn.Module, batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """Prompts -> scored rollouts with advantages, old and reference log-probs, and their unit counts."""
        loss = self.loss
        group = self.sampling.num_generations
        prepared = []
        for k, batch in enumerate(batches):
            rollout = generate_rollout(model, self.tokenizer, batch["prompts"], self.sampling)
            total, per_source = self.score(rollout)
            total, keep = grpo_rewards_and_keep(
                total,
                rollout.truncated,
                group,
                truncation=loss.truncated,
                truncation_penalty=loss.truncation_penalty,
                skip_equal_groups=loss.skip_equal_groups,
            )
            advantages = group_advantages(total, group, scale_by_std=loss.scale_rewards)
            tensors = rollout.batch()
            tensors["labels"] = torch.where(keep[:, None], tensors["labels"], -100)
            device = next(model.parameters()).device
            tensors = {name: t.to(device) for name, t in tensors.items()}
            tensors["advantages"] = advantages.to(device)
            with torch.no_grad():
                if loss.passes > 1:
                    tensors["old_logps"] = token_logps(model, tensors)[0]
                if self.reference is not None and loss.kl_beta > 0:
                    tensors["ref_logps"] = self.reference.run(model, lambda m, t=tensors: token_logps(m, t)[0])
            mask = tensors["labels"][:, 1:] != -100
            tensors["num_items"] = count_units(mask, loss.aggregation)
            tensors["metrics"] = self._rollout_metrics(rollout, total, per_source)
            prepared.append(tensors)
            if k == 0 and self.samples.due(step):
                self.samples.write(step, rollout, total, rows=2 * group, score_name="reward")
        return prepared

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
            kl_beta=self.loss.kl_beta,
            aggregation=self.loss.aggregation,
            max_tokens=self.sampling.max_new_tokens,
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
            model, self.tokenizer, prompts, self.sampling, greedy, self.eval_batch_size, self.seed, self._measure
        )

    def _measure(self, rollout: Rollout, sampled: bool) -> dict[str, torch.Tensor]:
        total, per_source = self.score(rollout)
        measures = {"reward": total, **{f"rewards/{name}": values for name, values in per_source.items()}}
        if self.task is not None:
            measures[self.task.key] = self.task.score(rollout)
        return measures
