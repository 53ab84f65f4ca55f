"""Online DPO: the dpo recipe's mode that trains on fresh pairs, sampled from the current policy and judged each step.

The runner's per-step experience hook does the online part, so that the step function (offline DPO's own) and the
loss (:func:`~tunekit.losses.preference.preference_loss`) stay what they are: ``prepare`` samples
``sampling.num_generations`` completions for each prompt of the step, the judge ranks them, and each prompt's best
and worst become one pair of a DPO batch (:mod:`tunekit.rl.online_pairs`); the step then takes the DPO-family loss on
those pairs, with the reference policy as offline DPO has it. Nothing is carried from step to step but a count of
skipped steps (checkpointed), and the sampling draws from the run's random state, which checkpoints restore: a
resumed run repeats the interrupted one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tunekit.data.pairs import PairDataConfig
from tunekit.data.prompts import PromptDataConfig, PromptExample, load_prompts
from tunekit.errors import ConfigError, DataError, InvalidValue, require
from tunekit.judges.load import JudgeConfig, check_judge, load_judge
from tunekit.judges.rubric import load_rubric
from tunekit.rl.evaluation import sampled_and_greedy_means
from tunekit.rl.online_pairs import is_pairwise, judge_and_pair, judge_metrics, pair_batch
from tunekit.rl.reward_calls import check_reward_rows
from tunekit.rl.rewards import RewardSource, load_reward_sources
from tunekit.rl.rollout import Rollout, SamplingConfig, generate_rollout
from tunekit.rl.samples import SampleLog
from tunekit.rl.task import TaskMetric, load_task_metric
from tunekit.train.checkpoint import checkpoint_state
from tunekit.train.engines import all_reduce_sum

# The data keys that only preference pairs have; online mode reads prompts, and refuses any of these set.
PAIR_ONLY_KEYS = (
    "chosen_column",
    "rejected_column",
    "margin_column",
    "prompt_delimiter",
    "max_length",
    "identical_pairs",
)


def _online_sampling() -> SamplingConfig:
    # Two completions per prompt, as TRL's OnlineDPOTrainer samples.
    return SamplingConfig(num_generations=2, max_new_tokens=32, temperature=1.0)


@dataclass
class OnlineDPOConfig:
    # Online DPO: every step samples completions of its prompts from the current policy, the judge ranks them, and the
    # loss trains on each prompt's best and worst (docs/dpo.md#online-dpo). data then holds prompts, as GRPO's does.
    enabled: bool = False
    # Who ranks the samples: a reward function, a reward model or an LLM judge (llm:<model> with a rubric).
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # How completions are sampled from the policy; num_generations (at least 2) per prompt, best against worst.
    sampling: SamplingConfig = field(default_factory=_online_sampling)
    # A prompt whose samples the judge ranks equal carries no preference: drop its pair (a step where every prompt
    # tied is skipped, no update), or keep it, first sample chosen and last rejected, as TRL's OnlineDPOTrainer does.
    ties: Literal["drop", "keep"] = "drop"
    # Subtracted from the ranking score of each completion that reached sampling.max_new_tokens without ending (TRL's
    # missing_eos_penalty); 0: none.
    missing_eos_penalty: float = 0.0
    # The checker held-out evaluations score beside the judge, as eval/task/<name>: auto (math_correct when the
    # held-out prompts have an answer column), a reward-function name, or null (none).
    task_metric: str | None = "auto"
    # Write prompts, completions and their ranking scores to samples.jsonl at the steps that fall on a multiple of
    # this (0: never).
    sample_every: int = 10
    # Held-out prompts sampled and judged at each evaluation (null: all).
    max_eval_examples: int | None = 64

    def __post_init__(self) -> None:
        n = self.sampling.num_generations
        require(
            not self.enabled or n >= 2,
            "sampling.num_generations",
            f"must be at least 2, got {n}: online DPO pairs the best of a prompt's samples with the worst",
        )
        require(
            not self.enabled or bool(self.judge.name.strip()),
            "judge.name",
            "is empty: online DPO needs a judge, an LLM (llm:<model>), a reward function (math_correct) or a reward "
            "model (model:runs/reward-tiny/final)",
        )
        require(
            self.missing_eos_penalty >= 0, "missing_eos_penalty", f"must be 0 or more, got {self.missing_eos_penalty}"
        )
        require(self.sample_every >= 0, "sample_every", f"must be 0 or more, got {self.sample_every}")
        require(
            self.max_eval_examples is None or self.max_eval_examples >= 0,
            "max_eval_examples",
            f"must be 0 or more (or null for all), got {self.max_eval_examples}",
        )


def check_online_keys(online: OnlineDPOConfig, data: PairDataConfig, reference: str | None) -> None:
    """The dpo config's keys that contradict its mode, refused by name (an InvalidValue with the dotted key): in online
    mode the pair-only data keys and a precomputed reference; outside it, any online key but ``enabled``."""
    if not online.enabled:
        default = _flat(dataclasses.asdict(OnlineDPOConfig()))
        for key, value in _flat(dataclasses.asdict(online)).items():
            if value != default[key]:
                raise InvalidValue(f"online.{key}", "is set but online.enabled is false; turn online DPO on or drop it")
        return
    pairs = PairDataConfig()
    for key in PAIR_ONLY_KEYS:
        if getattr(data, key) != getattr(pairs, key):
            raise InvalidValue(
                f"data.{key}",
                "belongs to preference pairs, but with online.enabled=true data holds prompts only (data.path, "
                "prompt_column, prompt_template, max_prompt_length and the source keys); drop it",
            )
    if reference == "precompute":
        raise InvalidValue(
            "reference",
            "is precompute, but online DPO samples new completions every step, so their reference log-probs cannot "
            "be computed before training; use on_the_fly (or leave it null)",
        )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def prompt_data(data: PairDataConfig, online: OnlineDPOConfig) -> PromptDataConfig:
    """The dpo recipe's data section read as prompts: its source keys, prompt column and template as they are; a
    max_prompt_length of null takes the prompt data default (a prompt past it is an error naming its row, not cut)."""
    source = {f.name: getattr(data, f.name) for f in dataclasses.fields(PromptDataConfig) if hasattr(data, f.name)}
    if data.max_prompt_length is None:
        del source["max_prompt_length"]
    return PromptDataConfig(**source, max_eval_examples=online.max_eval_examples)


@dataclass
class OnlineInputs:
    """What online DPO reads before its policy: the prompts, the judge, the held-out checker and the sample log."""

    prompts: list[PromptExample]
    held_out: list[PromptExample]
    judge: Any
    task: TaskMetric | None
    samples: SampleLog
    summary: str  # the data line printed, for the model card


def check_judge_config(judge: JudgeConfig) -> None:
    """:func:`~tunekit.judges.load.check_judge` before anything loads, its message naming the online.judge key."""
    try:
        check_judge(judge, "online.judge")
    except ConfigError as err:
        if str(err).startswith("online.judge"):
            raise
        key = "online.judge.rubric" if judge.is_llm else "online.judge.name"
        raise ConfigError(f"{key}: {err}") from None


def load_online_inputs(
    data: PairDataConfig,
    online: OnlineDPOConfig,
    seed: int,
    tokenizer: Any,
    output_dir: Path,
    resume_from: Path | None,
    say: Any,
) -> OnlineInputs:
    """Prompts (train and held out), checked against the judge's needs before anything is written, then the judge
    itself (an LLM judge's model loads here, on the CPU; ``prepare`` moves it to the policy's device)."""
    read = load_prompts(prompt_data(data, online), tokenizer, seed)
    rows = [*read.train, *read.held_out]
    judge_config = online.judge
    if judge_config.is_llm:
        check_rows_for_rubric(rows, load_rubric(judge_config.rubric))
    else:
        check_reward_rows(load_reward_sources([RewardSource(judge_config.name, kwargs=judge_config.kwargs)]), rows)
    task = load_task_metric(online.task_metric, read.held_out)
    judge = load_judge(judge_config, device="cpu")
    kind = "pairwise" if is_pairwise(judge) else "scoring"
    summary = (
        f"data: {len(read.train)} prompts, {len(read.held_out)} held out, {read.empty_dropped} dropped as empty; "
        f"{online.sampling.num_generations} completions each, ranked by {judge_config.name} ({kind}); task metric: "
        f"{task.name if task else 'none'}"
    )
    say(summary)
    resume_step = checkpoint_state(resume_from)["step"] if resume_from else None
    samples = SampleLog(output_dir / "samples.jsonl", online.sample_every, resume_step)
    return OnlineInputs(read.train, read.held_out, judge, task, samples, summary)


class OnlineDPO:
    """The hooks online DPO gives the runner: ``prepare`` (sample, judge, pair), ``select`` (skip a step with no
    pair anywhere) and ``evaluate`` (held-out judge score and task metric). The step function is offline DPO's.

    Its state between steps, checkpointed with the run's, is the number of steps skipped so far because every
    prompt tied: such a step writes no metrics line, so later lines carry the count as ``judge/all_tied_steps``.
    """

    def __init__(
        self, config: OnlineDPOConfig, inputs: OnlineInputs, tokenizer: Any, seed: int, eval_batch_size: int
    ) -> None:
        """``seed`` seeds the held-out sampling; ``eval_batch_size`` prompts are generated for at a time there."""
        self.config = config
        self.sampling = config.sampling
        self.judge = inputs.judge
        self.task = inputs.task
        self.samples = inputs.samples
        self.tokenizer = tokenizer
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.all_tied_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"all_tied_steps": self.all_tied_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.all_tied_steps = int(state.get("all_tied_steps", 0))

    def prepare(self, model: torch.nn.Module, batches: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """Each micro-batch of prompts -> a DPO batch of its judged pairs (see :func:`pair_batch`), every one
        carrying the step's judge metrics under ``"metrics"``."""
        group = self.sampling.num_generations
        device = next(model.parameters()).device
        self._place_judge(device)
        prepared, parts = [], []
        for k, batch in enumerate(batches):
            rollout = generate_rollout(model, self.tokenizer, batch["prompts"], self.sampling)
            part = judge_and_pair(self.judge, rollout, group, self.config.ties, self.config.missing_eos_penalty)
            pairs = pair_batch(rollout, part.choice, part.keep, group)
            prepared.append({name: t.to(device) for name, t in pairs.items()})
            parts.append(part)
            if k == 0 and self.samples.due(step):
                self.samples.write(step, rollout, part.scores, rows=2 * group, score_name="judge_score")
        # The same step-wide values on every micro-batch: the runner's weighting by pairs then leaves them as they are.
        metrics = {**judge_metrics(parts, group), "judge/all_tied_steps": float(self.all_tied_steps)}
        for batch in prepared:
            batch["metrics"] = metrics
        return prepared

    def select(self, prepared: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
        """The step's batches, or none when no process kept a pair (every prompt tied under ties=drop): the step is
        then skipped, with no update, on every process alike."""
        kept = torch.stack([batch["num_items"] for batch in prepared]).sum().float().reshape(1)
        if float(all_reduce_sum(kept)) > 0:
            return prepared
        self.all_tied_steps += 1
        return []

    def _place_judge(self, device: torch.device) -> None:
        # An LLM judge loaded on the CPU joins the policy's device at the first step (each process its own).
        judge_model = getattr(self.judge, "model", None)
        if isinstance(judge_model, torch.nn.Module) and next(judge_model.parameters()).device != device:
            judge_model.to(device)

    def evaluate(self, model: torch.nn.Module, prompts: list[PromptExample]) -> dict[str, float]:
        """Held-out judge score (judges that score) and task metric: of ``sampling.num_generations`` samples per
        prompt at the training temperature, and of one greedy answer per prompt. Does not change the training run."""
        greedy = SamplingConfig(
            num_generations=1,
            max_new_tokens=self.sampling.max_new_tokens,
            temperature=0,
            stop_strings=self.sampling.stop_strings,
        )
        if is_pairwise(self.judge) and self.task is None:
            return {}  # a pairwise judge scores no single completion, and there is no checker
        self._place_judge(next(model.parameters()).device)
        return sampled_and_greedy_means(
            model, self.tokenizer, prompts, self.sampling, greedy, self.eval_batch_size, self.seed, self._measure
        )

    def _measure(self, rollout: Rollout, sampled: bool) -> dict[str, torch.Tensor]:
        measures = {}
        if not is_pairwise(self.judge):
            measures["judge/score"] = self.judge.score(rollout.prompts, rollout.completions, rollout.columns).cpu()
        if self.task is not None:
            measures[self.task.key] = self.task.score(rollout)
        return measures


def check_rows_for_rubric(rows: list[PromptExample], rubric: Any) -> None:
    """A DataError naming the first row that lacks a data column the LLM judge's rubric reads (e.g. {reference})."""
    for row in rows:
        missing = [name for name in rubric.columns if row.columns.get(name) is None]
        if missing:
            raise DataError(
                f"{row.where}: the judge's rubric ({rubric.name}) reads {{{missing[0]}}}, but this row has no "
                f"column {missing[0]!r}"
            )
