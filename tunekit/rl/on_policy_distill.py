"""The distillation recipe's hooks for the runner: on-policy batches (GKD) and the held-out task evaluation.

Offline distillation trains on the data's completions. On-policy distillation (GKD, Agarwal et al. 2024) trains on
completions the student samples itself, scored token by token by the teacher: the student learns from its own
mistakes rather than only from states the teacher's data visits. GKD's lambda, ``on_policy.fraction`` here, is the
share of optimizer steps whose completions are sampled; a step's choice is a function of the seed and the step
alone, so a resumed run makes the same choices, and its samples come from the runner's checkpointed generators.

The prompt of an on-policy example is the data example's tokens before its first trained token (the prompt of a
prompt/completion row, the conversation before the first assistant turn of a messages row); whatever the data
had after it is replaced by the student's completion.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tunekit.data.collate import to_device
from tunekit.data.prompts import PromptExample
from tunekit.data.sft import Example
from tunekit.errors import require
from tunekit.losses.sft import IGNORE_INDEX
from tunekit.rl.rewards import load_reward_function
from tunekit.rl.rollout import SamplingConfig, check_sampling, generate_rollout, rollouts_in_batches
from tunekit.rl.task import AUTO, EXACT_MATCH, TaskMetric, load_task_metric
from tunekit.train.rng import seeded_rng

# The answer marker of the generated task and GSM8K; "auto" scores exact match when every reference has one.
ANSWER_MARKER = "####"


@dataclass
class OnPolicyConfig:
    # GKD's lambda: the share of optimizer steps trained on completions the student samples itself, scored by the
    # teacher (0: offline, the data's completions only; 1: every step on-policy). Each step's choice follows from the
    # seed and the step.
    fraction: float = 0.0
    # Longest sampled completion, in tokens; also the length of the greedy answers of the held-out evaluation.
    max_new_tokens: int = 32
    # Sampling temperature of the on-policy completions (0: greedy).
    temperature: float = 1.0
    # Sample only from the k most likely tokens (0: every token).
    top_k: int = 0
    # Nucleus sampling: only from the smallest set of tokens whose probability reaches top_p (1.0: all).
    top_p: float = 1.0

    def __post_init__(self) -> None:
        require(0 <= self.fraction <= 1, "fraction", f"must be in [0, 1], got {self.fraction}")
        check_sampling(self)

    def sampling(self, temperature: float | None = None) -> SamplingConfig:
        """One completion per prompt with these settings (``temperature`` overrides, e.g. 0 for greedy)."""
        chosen = self.temperature if temperature is None else temperature
        return SamplingConfig(1, self.max_new_tokens, chosen, self.top_k, self.top_p)


class DistillHooks:
    """``prepare`` (on-policy steps: the student's own completions replace the data's) and ``evaluate`` (greedy
    answers to the held-out prompts, scored by the task metric). Nothing is carried between steps."""

    def __init__(
        self,
        config: OnPolicyConfig,
        tokenizer: Any,
        collate: Callable[[list[Example]], dict[str, Any]],
        seed: int,
        held_out: list[PromptExample],
        task: TaskMetric | None,
        eval_batch_size: int,
    ) -> None:
        self.config, self.tokenizer, self.collate, self.seed = config, tokenizer, collate, seed
        self.held_out, self.task, self.eval_batch_size = held_out, task, eval_batch_size

    def is_on_policy(self, step: int) -> bool:
        """Whether optimizer step ``step`` samples its completions (the same answer on every process)."""
        if self.config.fraction in (0, 1):
            return bool(self.config.fraction)
        return random.Random(f"{self.seed}/{step}").random() < self.config.fraction

    def prepare(self, model: torch.nn.Module, micro_batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        if not self.is_on_policy(step):
            return [{**b, "metrics": {"on_policy": 0.0}} for b in micro_batches]
        return [self._sampled(model, batch) for batch in micro_batches]

    def _sampled(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with each example's completion replaced by one the student samples for its prompt."""
        ids = batch["example_ids"].tolist()
        prompts = [
            PromptExample(self.tokenizer.decode(p), p, {}, index)
            for p, index in zip(batch_prompts(batch), ids, strict=True)
        ]
        rollout = generate_rollout(model, self.tokenizer, prompts, self.config.sampling())
        items = []
        for row, prompt in enumerate(prompts):
            completion = rollout.labels[row][rollout.labels[row] != IGNORE_INDEX].tolist()
            labels = [IGNORE_INDEX] * len(prompt.prompt_ids) + completion
            items.append(Example(prompt.prompt_ids + completion, labels, prompt.index))
        sampled = to_device(self.collate(items), batch["input_ids"].device)
        lengths = rollout.completion_lengths.float()
        truncated = rollout.truncated.float()
        metrics = {"on_policy": 1.0, "completion_length": lengths.mean().item(), "truncated": truncated.mean().item()}
        return {**sampled, "metrics": metrics}

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """``{"greedy/task/<name>": mean}``: the task metric of the student's greedy answers to the held-out
        prompts (empty without a task metric)."""
        if self.task is None or not self.held_out:
            return {}
        greedy = self.config.sampling(temperature=0.0)
        scores = []
        with seeded_rng(self.seed):
            for rollout in rollouts_in_batches(model, self.tokenizer, self.held_out, greedy, self.eval_batch_size):
                scores.append(self.task.score(rollout))
        return {f"greedy/{self.task.key}": torch.cat(scores).mean().item()}


def batch_prompts(batch: dict[str, Any]) -> list[list[int]]:
    """Each example's tokens before its first label, from a padded ([B, T] with ``attention_mask``) or padding-free
    ([1, N] with ``seq_lens``) batch of unpacked examples."""
    if "seq_lens" in batch:
        sizes = batch["seq_lens"].tolist()
        rows = zip(batch["input_ids"][0].split(sizes), batch["labels"][0].split(sizes), strict=True)
    else:
        require(batch["attention_mask"].dim() == 2, "data.packing", "cannot be combined with on_policy.fraction > 0")
        rows = zip(batch["input_ids"], batch["labels"], strict=True)
    prompts = []
    for ids, labels in rows:
        first = int((labels != IGNORE_INDEX).nonzero()[0, 0]) if (labels != IGNORE_INDEX).any() else len(labels)
        prompts.append(ids[:first].tolist())
    return prompts


def held_out_prompts(examples: list[Example], tokenizer: Any, limit: int) -> list[PromptExample]:
    """The first ``limit`` held-out examples as generation prompts, each with its reference completion (the
    decoded label tokens) in the ``answer`` column that checkers such as math_correct read."""
    prompts = []
    for example in examples[:limit]:
        labels = torch.tensor(example.labels)
        trained = labels != IGNORE_INDEX
        first = int(trained.nonzero()[0, 0]) if trained.any() else len(labels)
        prompt_ids = example.input_ids[:first]
        reference = tokenizer.decode(labels[trained].tolist(), skip_special_tokens=True)
        prompts.append(PromptExample(tokenizer.decode(prompt_ids), prompt_ids, {"answer": reference}, example.index))
    return prompts


def distill_task_metric(name: str | None, held_out: list[PromptExample]) -> TaskMetric | None:
    """The checker that scores the held-out answers: ``auto`` is exact match of the final number when every
    reference has a ``####`` answer (the generated task, GSM8K), else none; any other name as GRPO's
    ``task_metric`` takes it."""
    if name == AUTO:
        if held_out and all(ANSWER_MARKER in p.columns["answer"] for p in held_out):
            return TaskMetric(EXACT_MATCH, load_reward_function(EXACT_MATCH))
        return None
    return load_task_metric(name, held_out)
