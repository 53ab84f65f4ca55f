"""Evaluate a model: exact-match accuracy, perplexity and reward-model win rate, with greedy, sampled or best-of-n
generation. Works on a base model, an adapter run's final/ or a merged export (model.path).

    python -m tunekit.recipes.eval                                       # tiny model, generated arithmetic, offline
    python -m tunekit.recipes.eval model.path=runs/sft-warmstart/final
    python -m tunekit.recipes.eval --config recipes/eval/gsm8k-tiny.yaml

Writes results.json (metrics, counts, config), samples.jsonl (one line per prompt) and config.yaml into
output_dir. Nothing is trained. See docs/eval.md.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.data.sft import tokenize_rows
from tunekit.errors import ConfigError
from tunekit.eval.data import EvalDataConfig, build_prompts, load_eval_rows, require_column, sft_data_config
from tunekit.eval.model import Device, check_causal_lm, load_eval_model, resolve_device
from tunekit.eval.perplexity import perplexity
from tunekit.eval.results import results_record, sample_lines, write_run
from tunekit.eval.sampling import GenerationConfig, check_generation, generate
from tunekit.eval.tasks import GENERATION_TASKS, TASKS, ExactMatchConfig, WinRateConfig, exact_match, win_rate
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.recipes.common import parse_args, run_command, say
from tunekit.rl.rewards import RewardSource, load_reward_function, load_reward_sources
from tunekit.train.rundir import check_room_for_checkpoints, prepare_output_dir


def _default_tasks() -> list[str]:
    return ["exact_match", "perplexity"]


@dataclass
class EvalConfig:
    # Where results go; default runs/eval-<date>-<time>. It must not hold a run already.
    output_dir: str | None = None
    # Seeds sampling (sample, best_of_n) and the generated rows of data.path "synthetic".
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    # One task or a list of them: exact_match, perplexity, win_rate.
    tasks: str | list[str] = field(default_factory=_default_tasks)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    exact_match: ExactMatchConfig = field(default_factory=ExactMatchConfig)
    win_rate: WinRateConfig = field(default_factory=WinRateConfig)
    # Prompts per generate call (best_of_n: n rows each) and rows per perplexity forward pass.
    batch_size: int = 16
    # Where the models run: auto (cuda when there is a GPU, else cpu), cpu, or cuda (an error without a GPU).
    device: Device = "auto"


@dataclass
class EvalResult:
    output_dir: Path
    metrics: dict[str, Any]
    record: dict[str, Any]  # what results.json holds
    samples: list[dict[str, Any]]  # what samples.jsonl holds


def selected_tasks(config: EvalConfig) -> list[str]:
    names = [config.tasks] if isinstance(config.tasks, str) else list(config.tasks)
    if not names:
        raise ConfigError(f"tasks is empty; name one or more of {', '.join(TASKS)}")
    for name in names:
        if name not in TASKS:
            close = difflib.get_close_matches(str(name), TASKS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"tasks: unknown task {name!r}{hint} (known tasks: {', '.join(TASKS)})")
    return list(dict.fromkeys(names))


def check_config(config: EvalConfig) -> list[str]:
    """Every check that needs no model or data, before anything is loaded; returns the tasks to run."""
    tasks = selected_tasks(config)
    if any(t in GENERATION_TASKS for t in tasks):
        check_generation(config.generation)
    if config.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {config.batch_size}")
    check_causal_lm(config.model.path, "model.path")
    if "win_rate" in tasks:
        if not config.win_rate.judge.strip():
            raise ConfigError(
                "win_rate.judge is empty: the win_rate task needs a reward model to score both sides "
                "(win_rate.judge=model:runs/reward-tiny/final) or a reward function"
            )
        if config.win_rate.tie_margin < 0:
            raise ConfigError(f"win_rate.tie_margin must be 0 or more, got {config.win_rate.tie_margin}")
        if config.win_rate.opponent != "reference":
            check_causal_lm(config.win_rate.opponent, "win_rate.opponent")
    resolve_device(config.device)
    output_dir = Path(config.output_dir)
    prepare_output_dir(output_dir, None)  # refuses a directory that already holds a run
    check_room_for_checkpoints(output_dir, 0)  # writable, with room for the (small) result files
    return tasks


def run(config: EvalConfig) -> EvalResult:
    started = time.perf_counter()
    if not config.output_dir:
        config.output_dir = f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}"
    tasks = check_config(config)
    gen, data = config.generation, config.data
    generating = any(t in GENERATION_TASKS for t in tasks)
    # Every named reward function and reward model loads before the evaluated model, so a wrong name fails first.
    select_by = load_reward_sources(gen.select_by) if generating and gen.mode == "best_of_n" else []
    checker = _source(config.exact_match.checker) if "exact_match" in tasks else None
    judge = _source(config.win_rate.judge) if "win_rate" in tasks else None
    against_model = "win_rate" in tasks and config.win_rate.opponent != "reference"

    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    rows = load_eval_rows(data, config.seed)
    prompts = build_prompts(rows, data, tokenizer) if generating else []
    answer_key = "data.answer_column" if data.answer_column else "data.completion_column (or set data.answer_column)"
    references = require_column(rows, data.reference_answer_column, answer_key) if checker else []
    opponent_texts: list[str] = []
    if "win_rate" in tasks and not against_model:
        opponent_texts = [str(c) for c in require_column(rows, data.completion_column, "data.completion_column")]
    if against_model:
        opponent_tokenizer = load_tokenizer(config.win_rate.opponent, config.model.trust_remote_code)
        opponent_prompts = build_prompts(rows, data, opponent_tokenizer)
    if "perplexity" in tasks:
        examples, stats = tokenize_rows(rows, sft_data_config(data), tokenizer)
    say(f"data: {len(rows)} rows from {rows.source}; tasks: {', '.join(tasks)}")

    device = resolve_device(config.device)
    from accelerate.utils import set_seed

    set_seed(config.seed)
    model = load_eval_model(config.model, device)
    say(f"model: {config.model.path} on {device}")
    results = {}
    generations = None
    if generating:
        say(f"generating: {len(prompts)} prompts, {gen.mode}, up to {gen.max_new_tokens} new tokens")
        generations = generate(model, tokenizer, prompts, gen, config.batch_size, select_by)
    if checker is not None and generations is not None:
        results["exact_match"] = exact_match(prompts, generations, references, checker)
    if "perplexity" in tasks:
        results["perplexity"] = perplexity(model, examples, stats, tokenizer.pad_token_id, config.batch_size)
    if judge is not None and generations is not None:
        if against_model:
            del model  # one model in memory at a time
            say(f"opponent: {config.win_rate.opponent}, generating with the same settings")
            opponent = load_eval_model(config.model, device, path=config.win_rate.opponent)
            opponent_texts = generate(
                opponent, opponent_tokenizer, opponent_prompts, gen, config.batch_size, select_by
            ).completions
        results["win_rate"] = win_rate(
            prompts, generations.completions, opponent_texts, judge, config.win_rate.tie_margin
        )
    results = {name: results[name] for name in tasks}
    record = results_record(config, results, time.perf_counter() - started)
    samples = sample_lines(prompts, generations, results)
    output_dir = Path(config.output_dir)
    write_run(output_dir, config, record, samples)
    say("results: " + ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items() if v is not None))
    say(f"done in {record['seconds']:.1f} s; run directory {output_dir}")
    return EvalResult(output_dir, record["metrics"], record, samples)


def _source(name: str) -> tuple[RewardSource, Any]:
    return RewardSource(name=name), load_reward_function(name)


def main(argv: list[str] | None = None) -> EvalResult:
    return run(parse_args(EvalConfig, argv, "eval", __doc__))


if __name__ == "__main__":
    run_command(main)
