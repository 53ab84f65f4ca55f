"""Writing an evaluation's run directory: config.yaml, samples.jsonl (lm_eval_samples.jsonl with lm-eval tasks)
and results.json.

Nothing is written until every task has finished, so a refused config or a failing reward function leaves no
run directory behind. Each file is written under a temporary name and renamed into place, and results.json
goes last: a run directory with a results.json holds a complete evaluation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.config import to_dict
from tunekit.data.prompts import PromptExample
from tunekit.eval.sampling import Generations
from tunekit.eval.tasks import TaskResult
from tunekit.files import write_atomic

if TYPE_CHECKING:
    from tunekit.eval.lm_eval import LMEvalRun

# Per-document requests and outcomes of the lm-eval tasks, written beside samples.jsonl when they ran.
LM_EVAL_SAMPLES = "lm_eval_samples.jsonl"


@dataclass
class EvalResult:
    output_dir: Path
    metrics: dict[str, Any]
    record: dict[str, Any]  # what results.json holds
    samples: list[dict[str, Any]]  # what samples.jsonl holds


def write_results(
    output_dir: Path,
    config: Any,
    results: dict[str, TaskResult],
    prompts: list[PromptExample],
    generations: Generations | None,
    seconds: float,
    lm_eval: LMEvalRun | None = None,
) -> EvalResult:
    """Write the run directory of finished ``results`` (by task, in the order they were asked for); with
    lm-eval tasks also its record in results.json and its samples in lm_eval_samples.jsonl."""
    record = results_record(config, results, seconds, lm_eval.record if lm_eval else None)
    samples = sample_lines(prompts, generations, results)
    extra = {LM_EVAL_SAMPLES: lm_eval.samples} if lm_eval else {}
    write_run(output_dir, config, record, samples, extra)
    return EvalResult(output_dir, record["metrics"], record, samples)


def sample_lines(
    prompts: list[PromptExample], generations: Generations | None, results: dict[str, TaskResult]
) -> list[dict[str, Any]]:
    """One line per prompt: its index and prompt, the kept completion, best-of-n's candidates and scores, and
    each generation task's fields (``correct``, ``win``, ...). Empty when no task generated."""
    if generations is None:
        return []
    lines = []
    for i, prompt in enumerate(prompts):
        line: dict[str, Any] = {"index": prompt.index, "prompt": prompt.prompt}
        line["completion"] = generations.completions[i]
        line["truncated"] = generations.truncated[i][generations.chosen[i]]
        if generations.scores is not None:
            line["score"] = generations.scores[i][generations.chosen[i]]
            line["completions"] = generations.candidates[i]
            line["scores"] = generations.scores[i]
        for result in results.values():
            if result.samples:
                line.update(result.samples[i])
        lines.append(line)
    return lines


def results_record(
    config: Any, results: dict[str, TaskResult], seconds: float, lm_eval: dict[str, Any] | None = None
) -> dict[str, Any]:
    """results.json: every task's metrics in one flat map, its counts by task, lm-eval's settings and versions
    when it ran, and the resolved config."""
    metrics: dict[str, Any] = {}
    for result in results.values():
        metrics.update(result.metrics)
    record = {
        "metrics": {k: _finite_or_none(v) for k, v in metrics.items()},
        "counts": {name: result.counts for name, result in results.items()},
        "model": config.model.path,
        "tasks": list(results),
        "seconds": round(seconds, 3),
    }
    if lm_eval is not None:
        record["lm_eval"] = lm_eval
    record["config"] = to_dict(config)
    return record


def write_run(
    output_dir: Path,
    config: Any,
    record: dict[str, Any],
    samples: list[dict[str, Any]],
    extra: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """Create ``output_dir`` and write its files (``extra``: more JSON-lines files by name), results.json last."""
    import yaml

    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(output_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    write_atomic(output_dir / "samples.jsonl", json_lines(samples))
    for name, lines in (extra or {}).items():
        write_atomic(output_dir / name, json_lines(lines))
    write_atomic(output_dir / "results.json", json.dumps(record, indent=2) + "\n")


def json_lines(lines: list[dict[str, Any]]) -> str:
    # default=str: lm-eval's samples may hold values JSON has no type for (tuples are lists already).
    return "".join(json.dumps(line, default=str) + "\n" for line in lines)


def _finite_or_none(value: Any) -> Any:
    # JSON has no infinity: a perplexity that overflowed is written as null rather than as invalid JSON.
    return None if isinstance(value, float) and not math.isfinite(value) else value
