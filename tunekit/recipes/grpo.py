"""Group-relative policy optimisation with verifiable reward functions and reward models.

    python -m tunekit.recipes.sft --config recipes/sft/tiny.yaml         # the warm start the default points at
    python -m tunekit.recipes.grpo                                       # tiny model, generated arithmetic prompts
    python -m tunekit.recipes.grpo --config recipes/grpo/gsm8k-tiny.yaml

Each optimizer step samples G completions for each prompt of the step (KV-cached, batched generation), scores
them with the configured reward sources, turns rewards into group-relative advantages, and optimises the clipped
surrogate (optionally with a KL penalty to the reference) for ``loss.passes`` optimizer steps on those rollouts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from tunekit.data import synthetic
from tunekit.data.sft import split_off
from tunekit.data.sources import Rows, read_rows
from tunekit.errors import ConfigError, DataError, exit_on_user_error
from tunekit.losses.advantages import equal_reward_groups, group_advantages
from tunekit.losses.policy import Aggregation, grpo_loss
from tunekit.models.adapters import count_parameters
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.models.logprobs import token_logps
from tunekit.models.policy import build_policy
from tunekit.models.reference import ReferencePolicy
from tunekit.recipes.common import RecipeConfig, final_saver, parse_args, run_spec, say, start_run
from tunekit.rl.rewards import RewardSource, compute_rewards, load_reward_function
from tunekit.rl.rollout import PromptExample, Rollout, SamplingConfig, generate_rollout
from tunekit.train.runner import RunResult, TrainConfig, train


@dataclass
class PromptDataConfig:
    # A .jsonl/.json/.parquet/.csv file, a dataset directory, a hub id, or "synthetic" (generated arithmetic).
    path: str = "synthetic"
    split: str = "train"
    prompt_column: str = "prompt"
    # How the prompt column is written; {prompt} is replaced by it.
    prompt_template: str = "{prompt}"
    eval_path: str | None = None
    eval_split: str = "train"
    eval_fraction: float = 0.1
    # Prompt tokens; a longer prompt is an error naming its row (there would be no room to answer).
    max_prompt_length: int = 256
    synthetic_size: int = 1000
    max_examples: int | None = None
    # Held-out prompts scored at each evaluation (null: all).
    max_eval_examples: int | None = 64


@dataclass
class GRPOLossConfig:
    # Divide advantages by the group's reward std (GRPO); false gives Dr. GRPO's unscaled advantages.
    scale_rewards: bool = True
    # token: mean over all completion tokens of the step; sequence: per-completion mean, then mean (GRPO);
    # dr_grpo: per-completion sum over sampling.max_new_tokens, then mean.
    aggregation: Aggregation = "token"
    clip_low: float = 0.2
    # Upper clip range; larger than clip_low is "clip-higher" (DAPO).
    clip_high: float = 0.28
    # Weight of the k3 KL penalty to the reference policy (0: no reference pass at all).
    kl_beta: float = 0.0
    # Optimizer steps on each batch of rollouts; the log-probs at sampling time stay the "old" policy.
    passes: int = 1
    # Drop groups whose completions all got the same reward (zero advantage, no learning signal).
    skip_equal_groups: bool = False
    # Completions that hit max_new_tokens: keep, mask (no loss), or penalize (truncation_penalty added).
    truncated: Literal["keep", "mask", "penalize"] = "keep"
    truncation_penalty: float = -1.0


def _grpo_train() -> TrainConfig:
    return TrainConfig(lr=5e-4, epochs=1, micro_batch_size=8, eval_every=10, warmup_ratio=0.0, scheduler="constant")


def _default_rewards() -> list[RewardSource]:
    return [RewardSource(name="math_correct", weight=1.0)]


def _warm_model() -> ModelConfig:
    # The SFT run that recipes/sft/tiny.yaml writes: GRPO needs a policy that already answers in the format.
    return ModelConfig(path="runs/sft-tiny/final")


@dataclass
class GRPOConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=_warm_model)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rewards: list[RewardSource] = field(default_factory=_default_rewards)
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    train: TrainConfig = field(default_factory=_grpo_train)
    # Write prompts, completions and rewards to samples.jsonl every this many steps (0: never).
    sample_every: int = 10


def load_prompts(
    config: PromptDataConfig, tokenizer: Any, seed: int
) -> tuple[list[PromptExample], list[PromptExample]]:
    """Train and held-out prompts; a prompt longer than data.max_prompt_length is an error naming its row."""
    if config.path == "synthetic":
        train_rows = Rows("synthetic", synthetic.prompts_with_answers(config.synthetic_size, seed))
        n_eval = max(1, int(config.synthetic_size * config.eval_fraction)) if config.eval_fraction > 0 else 0
        eval_rows = Rows("synthetic-eval", synthetic.prompts_with_answers(n_eval, seed + 10_000)) if n_eval else None
    else:
        train_rows = read_rows(config.path, config.split)
        eval_rows = read_rows(config.eval_path, config.eval_split) if config.eval_path else None
        if config.max_examples is not None:
            train_rows = train_rows.subset(list(range(min(config.max_examples, len(train_rows)))))
        if eval_rows is None and config.eval_fraction > 0:
            train_rows, eval_rows = split_off(train_rows, config.eval_fraction, seed)
    if eval_rows is not None and config.max_eval_examples is not None:
        eval_rows = eval_rows.subset(list(range(min(config.max_eval_examples, len(eval_rows)))))
    return _prompts(train_rows, config, tokenizer), _prompts(eval_rows, config, tokenizer) if eval_rows else []


def _prompts(rows: Rows, config: PromptDataConfig, tokenizer: Any) -> list[PromptExample]:
    if len(rows) == 0:
        raise DataError(f"{rows.source} holds no rows")
    out = []
    bos = tokenizer.bos_token_id
    for i, row in enumerate(rows.rows):
        where = rows.where(i)
        prompt = row.get(config.prompt_column)
        if prompt is None:
            raise DataError(f"{where}: missing column {config.prompt_column!r} (the row has {sorted(row)})")
        if isinstance(prompt, list):
            from tunekit.data.formats import render_chat

            text = render_chat(prompt, tokenizer, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, str):
            text = config.prompt_template.replace("{prompt}", prompt)
            ids = ([bos] if bos is not None else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            raise DataError(f"{where}: column {config.prompt_column!r} must be a string or a list of messages")
        if len(ids) > config.max_prompt_length:
            raise DataError(
                f"{where}: the prompt has {len(ids)} tokens, more than data.max_prompt_length="
                f"{config.max_prompt_length}, leaving no room for completions; raise it or shorten the prompt"
            )
        columns = {k: v for k, v in row.items() if k != config.prompt_column}
        out.append(PromptExample(text, ids, columns, i))
    return out


def collate_prompts(prompts: list[PromptExample]) -> dict[str, Any]:
    return {"prompts": prompts, "num_items": torch.tensor(len(prompts))}


class GRPOTrainer:
    """The recipe's two hooks for the runner: ``prepare`` (rollouts and advantages) and ``step`` (the loss)."""

    def __init__(
        self, config: GRPOConfig, tokenizer: Any, reference: ReferencePolicy | None, rewards: list, output_dir: Path
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.reference = reference
        self.rewards = rewards
        self.samples_path = output_dir / "samples.jsonl"

    def score(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return compute_rewards(self.rewards, rollout.prompts, rollout.completions, rollout.columns)

    def prepare(self, model: torch.nn.Module, batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """Prompts -> scored rollouts with advantages, old and reference log-probs, and their item counts."""
        loss = self.config.loss
        group = self.config.sampling.num_generations
        prepared = []
        for k, batch in enumerate(batches):
            rollout = generate_rollout(model, self.tokenizer, batch["prompts"], self.config.sampling)
            total, per_source = self.score(rollout)
            if loss.truncated == "penalize":
                total = total + loss.truncation_penalty * rollout.truncated.float()
            advantages = group_advantages(total, group, scale_by_std=loss.scale_rewards)
            tensors = rollout.batch()
            keep = torch.ones(len(total), dtype=torch.bool)
            if loss.skip_equal_groups:
                keep = ~equal_reward_groups(total, group).repeat_interleave(group)
            if loss.truncated == "mask":
                keep &= ~rollout.truncated
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
            tensors["num_items"] = self._num_items(mask)
            tensors["metrics"] = self._rollout_metrics(rollout, total, per_source)
            prepared.append(tensors)
            if k == 0 and self.config.sample_every and step % self.config.sample_every == 0:
                self._write_samples(step, rollout, total)
        return prepared

    def _num_items(self, mask: torch.Tensor) -> torch.Tensor:
        if self.config.loss.aggregation == "token":
            return mask.sum()
        return torch.tensor(mask.shape[0])

    def step(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logps, mask = token_logps(model, batch)
        old = batch.get("old_logps", logps.detach())
        loss_sum, _, metrics = grpo_loss(
            logps,
            old,
            batch["advantages"],
            mask,
            clip_low=self.config.loss.clip_low,
            clip_high=self.config.loss.clip_high,
            ref_logps=batch.get("ref_logps"),
            kl_beta=self.config.loss.kl_beta,
            aggregation=self.config.loss.aggregation,
            max_tokens=self.config.sampling.max_new_tokens,
        )
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

    def _write_samples(self, step: int, rollout: Rollout, total: torch.Tensor) -> None:
        import os

        if os.environ.get("RANK", "0") != "0":
            return
        with self.samples_path.open("a") as f:
            for i in range(min(len(rollout.prompts), 2 * self.config.sampling.num_generations)):
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "prompt": rollout.prompts[i],
                            "completion": rollout.completions[i],
                            "reward": float(total[i]),
                        }
                    )
                    + "\n"
                )

    def evaluate(self, model: torch.nn.Module, prompts: list[PromptExample]) -> dict[str, float]:
        """Held-out mean reward, in total and per source: of the policy's samples (the quantity GRPO raises),
        ``sampling.num_generations`` per prompt at the training temperature, and of one greedy answer per prompt.

        The samples use their own seeded generator state, so evaluating does not change the training run.
        """
        results = {}
        greedy = SamplingConfig(
            num_generations=1,
            max_new_tokens=self.config.sampling.max_new_tokens,
            temperature=0,
            stop_strings=self.config.sampling.stop_strings,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            for prefix, sampling in (("", self.config.sampling), ("greedy/", greedy)):
                totals, sources = [], {}
                size = self.config.train.micro_batch_size
                for start in range(0, len(prompts), size):
                    rollout = generate_rollout(model, self.tokenizer, prompts[start : start + size], sampling)
                    total, per_source = self.score(rollout)
                    totals.append(total)
                    for name, values in per_source.items():
                        sources.setdefault(name, []).append(values)
                results[f"{prefix}reward"] = torch.cat(totals).mean().item()
                results.update({f"{prefix}rewards/{n}": torch.cat(v).mean().item() for n, v in sources.items()})
        return results


def check_config(config: GRPOConfig) -> None:
    if config.sampling.num_generations < 2:
        raise ConfigError("sampling.num_generations must be at least 2: GRPO compares completions within a group")
    if config.loss.passes < 1:
        raise ConfigError("loss.passes must be at least 1")
    if not config.rewards:
        raise ConfigError("rewards is empty; name at least one reward source (e.g. math_correct)")
    path = Path(config.model.path)
    if config.model.path.startswith(("runs/", "./", "../", "/")) and not path.exists():
        raise ConfigError(
            f"model.path {config.model.path!r} does not exist. The default GRPO config starts from the SFT warm "
            "start that `python -m tunekit.recipes.sft --config recipes/sft/tiny.yaml` writes; run that first, "
            "or set model.path"
        )


def run(config: GRPOConfig) -> RunResult:
    check_config(config)
    rewards = [(source, load_reward_function(source.name)) for source in config.rewards]
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    prompts, eval_prompts = load_prompts(config.data, tokenizer, config.seed)
    say(
        f"data: {len(prompts)} prompts, {len(eval_prompts)} held out; {config.sampling.num_generations} "
        "completions each"
    )
    model = build_policy(config.model, reference_adapter=config.loss.kl_beta > 0)
    counts = count_parameters(model)
    say(f"policy: {config.model.path}, {counts['trainable']:,} of {counts['total']:,} parameters trained")
    reference = ReferencePolicy.for_policy(model) if config.loss.kl_beta > 0 else None
    trainer = GRPOTrainer(config, tokenizer, reference, rewards, output_dir)
    spec = run_spec(
        config,
        output_dir,
        resume_from,
        items=prompts,
        collate=collate_prompts,
        evaluate=partial(trainer.evaluate, prompts=eval_prompts) if eval_prompts else None,
        save_final=final_saver(tokenizer),
        prepare=trainer.prepare,
        passes_per_batch=config.loss.passes,
    )
    result = train(spec, model, trainer.step)
    rewards_seen = [r["eval/reward"] for r in result.history if "eval/reward" in r]
    if rewards_seen:
        say(f"held-out mean reward: {rewards_seen[0]:.3f} at the first evaluation, {rewards_seen[-1]:.3f} at the end")
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(GRPOConfig, argv, "grpo", __doc__))


if __name__ == "__main__":
    exit_on_user_error(main)
