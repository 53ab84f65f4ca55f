"""PPO's hooks for the runner: ``prepare`` collects experience, ``select`` deals out minibatches, ``step`` trains.

One *rollout batch* is the prompts of one runner step (``train.micro_batch_size x train.grad_accum_steps`` per
process), with ``sampling.num_generations`` completions each. Its experience is trained on for ``ppo.epochs``
epochs of ``ppo.minibatches`` shuffled minibatches, one optimizer step per minibatch, so the runner's
``passes_per_batch`` is ``epochs x minibatches``.

Experience of N rollouts, all tensors [N, T-1] over next-token positions (position t predicts token t + 1):

- ``old_logps`` (actor), ``ref_logps`` (reference), ``old_values`` (critic), taken once after generation;
- ``rewards``: ``-kl_coef * (old_logps - ref_logps)`` on every completion token, plus the sequence score (reward
  model and/or reward functions, minus ``ppo.missing_eos_penalty`` for completions that never ended) on the last
  (:func:`tunekit.losses.shaping.kl_penalized_rewards`);
- ``advantages`` (GAE, whitened over the rollout batch) and ``returns`` (GAE + values), the critic's targets.

The trainer's state between steps (the KL coefficient, the rollout batch's step, the early-stop decision and the
last approximate KL) is its ``state_dict``, which the runner saves in every checkpoint and restores on resume: a
run resumed part-way through a batch's passes goes on with the same coefficient, minibatch shuffle and decision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from tunekit.errors import require
from tunekit.losses.advantages import gae
from tunekit.losses.policy import count_units, ppo_losses
from tunekit.losses.reduce import masked_mean, masked_whiten, selective_log_softmax
from tunekit.losses.shaping import adaptive_kl_coef, kl_penalized_rewards
from tunekit.models.logprobs import token_logps
from tunekit.rl.evaluation import sampled_and_greedy_means
from tunekit.rl.reward_calls import compute_rewards
from tunekit.rl.roles import SharedRoles
from tunekit.rl.rollout import PromptExample, Rollout, RolloutFn, SamplingConfig, generate_rollout
from tunekit.rl.samples import SampleLog
from tunekit.rl.task import TaskMetric
from tunekit.rl.tool_rollout import tool_metrics
from tunekit.train.engines import all_reduce_sum
from tunekit.train.spec import step_result


@dataclass
class KLControlConfig:
    # Weight of the per-token KL penalty in the reward (beta), at the start when adaptive.
    coef: float = 0.1
    # Steer coef so that the KL of a completion (summed over its tokens) approaches target; false keeps it fixed.
    adaptive: bool = True
    # Nats per completion: the adaptive controller's aim, and the limit the evaluation reports against.
    target: float = 4.0
    # Completions over which the adaptive controller closes the gap to the target (Ziegler et al., 2019). The
    # default run samples 400 completions; a horizon of 100 lets the coefficient respond within it.
    horizon: int = 100

    def __post_init__(self) -> None:
        require(self.target > 0, "target", f"must be positive, got {self.target}")
        require(self.horizon >= 1, "horizon", f"must be at least 1, got {self.horizon}")


@dataclass
class PPOLossConfig:
    # GAE discount per token (1.0: none; the score arrives at a completion's last token, the KL penalty on every token).
    gamma: float = 1.0
    # GAE lambda: 0 gives one-step TD errors (low variance, leans on the critic), 1 gives the full return minus the
    # value.
    lam: float = 0.95
    # Shift and scale advantages to mean 0 and std 1 over the rollout batch's completion tokens (all processes).
    whiten_advantages: bool = True
    # Passes over each rollout batch (ppo.epochs x ppo.minibatches optimizer steps per batch in all).
    epochs: int = 2
    # Shuffled minibatches each pass is cut into, one optimizer step each; at most the rollout batch's completions.
    minibatches: int = 2
    # Clip range of the policy ratio new/old probability: 1 - clip to 1 + clip.
    clip: float = 0.2
    # The value head's trust region: a prediction further than this from its rollout value gets the larger of its
    # clipped and unclipped squared errors.
    value_clip: float = 0.2
    # Weight of the value loss (0.5 x squared error against the GAE returns) added to the policy loss.
    value_coef: float = 0.1
    # Entropy bonus (0: off; otherwise the full-vocabulary entropy is computed with gradients).
    entropy_coef: float = 0.0
    # Stop training on a rollout batch once a minibatch's approximate KL(old || new) exceeds this (null: never).
    target_approx_kl: float | None = None
    # Subtracted from the score of a completion that reached max_new_tokens without EOS (null: no penalty).
    missing_eos_penalty: float | None = 1.0
    kl: KLControlConfig = field(default_factory=KLControlConfig)

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be at least 1, got {self.epochs}")
        require(self.minibatches >= 1, "minibatches", f"must be at least 1, got {self.minibatches}")


class KLController:
    """The KL coefficient: fixed, or adapted towards ``target`` after each rollout batch (see
    :func:`tunekit.losses.shaping.adaptive_kl_coef`)."""

    def __init__(self, config: KLControlConfig, coef: float | None = None) -> None:
        self.config = config
        self.coef = config.coef if coef is None else coef

    def update(self, kl_per_completion: float, completions: float) -> None:
        if self.config.adaptive:
            self.coef = adaptive_kl_coef(
                self.coef, kl_per_completion, self.config.target, self.config.horizon, completions
            )


class PPOTrainer:
    """Hooks for :func:`tunekit.train.runner.train`; ``roles`` switches the shared base between the four roles.

    ``ppo`` and ``sampling`` are the recipe's sections of those names; ``seed`` seeds the minibatch shuffles and the
    held-out sampling, for which ``eval_batch_size`` prompts are generated at a time. ``generate`` makes the
    rollouts: :func:`~tunekit.rl.rollout.generate_rollout`, or a
    :class:`~tunekit.rl.tool_rollout.ToolRollouts` whose tool messages are off the label mask, so that they get no
    KL penalty, value target or advantage of their own (GAE steps over them, see :func:`tunekit.losses.advantages.gae`).
    """

    def __init__(
        self,
        ppo: PPOLossConfig,
        sampling: SamplingConfig,
        *,
        seed: int,
        eval_batch_size: int,
        tokenizer: Any,
        roles: SharedRoles,
        reward_sources: list,
        samples: SampleLog,
        task: TaskMetric | None = None,
        generate: RolloutFn | None = None,
    ) -> None:
        self.loss = ppo
        self.sampling = sampling
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.tokenizer = tokenizer
        self.roles = roles
        self.reward_sources = reward_sources
        self.samples = samples
        self.task = task
        self.generate = generate or generate_rollout
        self.kl = KLController(ppo.kl)
        self.rollout_step = -1  # the runner step whose rollouts the current experience holds
        self.stopped_early = False  # the current experience's remaining passes are skipped
        self.last_approx_kl = 0.0  # of the last minibatch trained on, over every process

    def state_dict(self) -> dict[str, Any]:
        return {
            "kl_coef": self.kl.coef,
            "rollout_step": self.rollout_step,
            "stopped_early": self.stopped_early,
            "last_approx_kl": self.last_approx_kl,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl.coef = state["kl_coef"]
        self.rollout_step = state["rollout_step"]
        self.stopped_early = state["stopped_early"]
        self.last_approx_kl = state["last_approx_kl"]

    # ------------------------------------------------------------------------------------------- experience
    def score(self, model: torch.nn.Module, rollout: Rollout, tensors: dict) -> tuple[torch.Tensor, dict]:
        """Sequence scores [N] and their parts: the reward model's, each reward function's, the EOS penalty."""
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(rollout.completions))
        if self.roles.has_reward:
            parts["reward_model"] = self.roles.reward_scores(model, tensors).cpu()
            total = total + parts["reward_model"]
        if self.reward_sources:
            functions, per_source = compute_rewards(
                self.reward_sources, rollout.prompts, rollout.completions, rollout.columns
            )
            total = total + functions
            parts.update({f"rewards/{k}": v for k, v in per_source.items()})
        if self.loss.missing_eos_penalty is not None:
            total = total - self.loss.missing_eos_penalty * rollout.truncated.float()
        return total, parts

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """The step's prompts -> one experience batch (see the module docstring)."""
        model.eval()  # old log-probs and values without dropout noise; the runner switches back to train()
        prompts = [p for batch in batches for p in batch["prompts"]]
        rollout = self.generate(model, self.tokenizer, prompts, self.sampling)
        device = next(model.parameters()).device
        tensors = {name: t.to(device) for name, t in rollout.batch().items()}
        mask = tensors["labels"][:, 1:] != -100
        old_logps = token_logps(model, tensors)[0]
        with self.roles.acting(model, "reference"):
            ref_logps = token_logps(model, tensors)[0]
        values = self.roles.values(model, tensors) * mask
        score, parts = self.score(model, rollout, tensors)
        score = score.to(device)

        rewards, kl = kl_penalized_rewards(score, old_logps, ref_logps, mask, self.kl.coef)
        advantages, returns = gae(rewards, values, mask, self.loss.gamma, self.loss.lam)
        if self.loss.whiten_advantages:
            advantages = masked_whiten(advantages, mask, sum_across=all_reduce_sum) * mask

        kl_per_completion, completions = _global_mean_and_count(kl.sum(-1))
        metrics = {
            "reward": _global_mean_and_count(score)[0],
            "reward_with_kl_penalty": _global_mean_and_count(rewards.sum(-1))[0],
            "kl": kl_per_completion,
            "kl_coef": self.kl.coef,
            "completion_length": rollout.completion_lengths.float().mean().item(),
            "truncated_fraction": rollout.truncated.float().mean().item(),
            "explained_variance": _explained_variance(values, returns, mask),
            **{k: v.float().mean().item() for k, v in parts.items()},
            **tool_metrics(rollout),
        }
        self.kl.update(kl_per_completion, completions)
        self.rollout_step, self.stopped_early = step, False
        written = 4 if self.samples.due(step) else 0
        if written:
            self.samples.write(step, rollout, score, rows=written, score_name="score")
        self.samples.write_tool_failures(step, rollout, score, score_name="score", after=written)
        experience = {
            **tensors,
            "old_logps": old_logps,
            "ref_logps": ref_logps,
            "old_values": values,
            "advantages": advantages,
            "returns": returns,
            "metrics": metrics,
        }
        return [experience]

    def select(self, prepared: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
        """Pass ``k`` trains minibatch ``k % minibatches`` of epoch ``k // minibatches``'s shuffle of the rows."""
        target = self.loss.target_approx_kl
        if k > 0 and target is not None and self.last_approx_kl > target:
            self.stopped_early = True
        if self.stopped_early:
            return []
        experience = prepared[0]
        n = experience["input_ids"].shape[0]
        epoch, m = divmod(k, self.loss.minibatches)
        seed = (self.seed * 1_000_003 + self.rollout_step) * 1_009 + epoch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        rows = order[m * n // self.loss.minibatches : (m + 1) * n // self.loss.minibatches]
        rows = rows.to(experience["input_ids"].device)
        minibatch = {key: v[rows] if isinstance(v, torch.Tensor) else v for key, v in experience.items()}
        minibatch["num_items"] = count_units(minibatch["labels"][:, 1:] != -100, "token")
        return [minibatch]

    # --------------------------------------------------------------------------------------------- training
    def step(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logps, mask, entropy = self._actor_logps(model, batch)
        values = self.roles.values(model, batch)
        output = ppo_losses(
            logps,
            batch["old_logps"],
            batch["advantages"],
            values,
            batch["old_values"],
            batch["returns"],
            mask,
            clip=self.loss.clip,
            value_clip=self.loss.value_clip,
            value_coef=self.loss.value_coef,
            entropy=entropy,
            entropy_coef=self.loss.entropy_coef,
        )
        loss_sum, metrics = step_result(output, batch)
        if model.training:
            self.last_approx_kl = _global_mean_and_count(metrics["approx_kl"].reshape(1))[0]
        return loss_sum, {**metrics, **batch.get("metrics", {})}

    def _actor_logps(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        if self.loss.entropy_coef == 0:
            return token_logps(model, batch, entropy=True)
        # An entropy bonus needs the entropy's gradient, hence the full log-softmax (memory: [B, T, V]).
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        logits = model(**inputs).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        log_p = torch.log_softmax(logits, dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return selective_log_softmax(logits, labels.clamp(min=0)) * mask, mask, entropy * mask

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, model: torch.nn.Module, prompts: list[PromptExample]) -> dict[str, float]:
        """Held-out score of sampled completions (what PPO raises), their KL to the reference per completion, and
        the task metric (see :mod:`tunekit.rl.task`) of those samples and of one greedy answer per prompt.
        Evaluating does not change the training run.
        """
        greedy = dataclasses.replace(self.sampling, num_generations=1, temperature=0.0)
        return sampled_and_greedy_means(
            model,
            self.tokenizer,
            prompts,
            self.sampling,
            greedy,
            self.eval_batch_size,
            self.seed,
            lambda rollout, sampled: self._measure(model, rollout, sampled),
            self.generate,
        )

    def _measure(self, model: torch.nn.Module, rollout: Rollout, sampled: bool) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        tensors = {name: t.to(device) for name, t in rollout.batch().items()}
        kl = None
        if sampled:  # the KL of greedy answers says little about the policy PPO samples from
            logps, mask = token_logps(model, tensors)
            with self.roles.acting(model, "reference"):
                ref_logps = token_logps(model, tensors)[0]
            kl = ((logps - ref_logps) * mask).sum(-1).cpu()
        score, parts = self.score(model, rollout, tensors)
        measures = {"reward": score, **{name: values.float() for name, values in parts.items()}}
        if kl is not None:
            measures["kl"] = kl
        if self.task is not None:
            measures[self.task.key] = self.task.score(rollout)
        return measures


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over completion tokens: 1 is a perfect critic, <= 0 a useless one."""
    variance = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    residual_variance = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return (1.0 - residual_variance / variance.clamp(min=1e-8)).item()


def _global_mean_and_count(values: torch.Tensor) -> tuple[float, float]:
    """Mean of ``values`` over every process's elements, and how many elements that is."""
    total = torch.stack([values.float().sum(), torch.tensor(float(values.numel()), device=values.device)])
    total = all_reduce_sum(total)
    return (total[0] / total[1].clamp(min=1)).item(), total[1].item()
