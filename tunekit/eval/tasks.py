"""The generation tasks, from completions to metrics: exact-match accuracy and win rate against an opponent.

Both score through :func:`tunekit.rl.reward_calls.compute_rewards`, so a checker or judge is named exactly like a
reward in GRPO: a built-in (``math_correct``, whose answer extraction reads GSM8K's ``#### N``), a
``file.py:function``, an import path, or a reward model ``model:<dir>``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import torch

from tunekit.data.prompts import PromptExample
from tunekit.errors import require
from tunekit.eval.sampling import Generations
from tunekit.rl.reward_calls import compute_rewards
from tunekit.rl.rewards import RewardFn, RewardSource, load_reward_function

TASKS = ("exact_match", "perplexity", "win_rate", "judge", "agreement")
GENERATION_TASKS = ("exact_match", "win_rate", "judge")
# Tasks that need the judge section (tunekit/eval/judging.py); agreement needs no evaluated model at all.
JUDGE_TASKS = ("judge", "agreement")
# Tasks run by lm-evaluation-harness (tunekit/eval/lm_eval.py): "lm_eval:gsm8k".
LM_EVAL_PREFIX = "lm_eval:"


@dataclass
class TaskResult:
    metrics: dict[str, float | None]  # results.json "metrics": the task's name and "<task>/<detail>" keys
    counts: dict[str, int]  # results.json "counts" of the task
    samples: list[dict[str, Any]] = field(default_factory=list)  # [P] fields merged into samples.jsonl lines


def selected_tasks(tasks: str | list[str]) -> list[str]:
    """The tasks a config's ``tasks`` names, in order, each once; an :class:`InvalidValue` for an empty list or an
    unknown name. ``lm_eval:<name>`` names an lm-evaluation-harness task, checked against lm-eval's own task list
    later (:func:`tunekit.eval.lm_eval.plan_lm_eval`), since reading that list takes seconds."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    require(bool(names), "tasks", f"is empty; name one or more of {', '.join(TASKS)}, or lm_eval:<task>")
    for name in names:
        if str(name).startswith(LM_EVAL_PREFIX):
            require(
                bool(str(name)[len(LM_EVAL_PREFIX) :].strip()),
                "tasks",
                f"names {name!r} without a task; give lm_eval:<task>, e.g. lm_eval:gsm8k",
            )
            continue
        close = difflib.get_close_matches(str(name), TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        require(name in TASKS, "tasks", f"names an unknown task {name!r}{hint} (known tasks: {', '.join(TASKS)})")
    return list(dict.fromkeys(names))


def load_source(name: str) -> tuple[RewardSource, RewardFn]:
    """A checker, judge or best-of-n scorer by its reward name, loaded (a ConfigError for a name that loads no
    function)."""
    return RewardSource(name=name), load_reward_function(name)


@dataclass
class ExactMatchConfig:
    # A reward function returning 1 for a right answer and 0 for a wrong one; it gets the row's reference as
    # `answer`. math_correct compares final numbers ("#### 18", or the last number of the text).
    checker: str = "math_correct"

    def __post_init__(self) -> None:
        require(bool(self.checker.strip()), "checker", "is empty; name a reward function, e.g. math_correct")


@dataclass
class WinRateConfig:
    # Scores both sides: a reward model ("model:runs/reward-tiny/final"), or a reward function (name or
    # "file.py:function"). Required for the win_rate task.
    judge: str = ""
    # "reference": the data's completion_column. Anything else is a model (local directory, hub id, an adapter
    # run's final/ or a merged export) that generates with the same generation settings.
    opponent: str = "reference"
    # Score differences up to this count as ties (half a win); identical completions always tie.
    tie_margin: float = 0.0

    def __post_init__(self) -> None:
        require(self.tie_margin >= 0, "tie_margin", f"must be 0 or more, got {self.tie_margin}")
        require(bool(self.opponent.strip()), "opponent", 'is empty; give "reference" or a model')


def prompt_columns(prompts: list[PromptExample]) -> dict[str, list[Any]]:
    """name -> [P] values of the prompts' data columns (every prompt carries the same names)."""
    return {key: [p.columns.get(key) for p in prompts] for key in prompts[0].columns} if prompts else {}


def exact_match(
    prompts: list[PromptExample],
    generations: Generations,
    references: list[Any],
    checker: tuple[RewardSource, RewardFn],
) -> TaskResult:
    """Accuracy of the kept completions against ``references`` [P]; with several candidates per prompt also the
    fraction of prompts where any candidate is right (``exact_match/any_of_n``, an oracle upper bound)."""
    columns = {**prompt_columns(prompts), "answer": list(references)}
    texts = [p.prompt for p in prompts]
    scores, _ = compute_rewards([checker], texts, generations.completions, columns)
    correct = scores > 0.5
    metrics = {"exact_match": correct.float().mean().item()}
    n = max(len(c) for c in generations.candidates)
    if n > 1:
        rows = [i for i, c in enumerate(generations.candidates) for _ in c]
        flat = [text for c in generations.candidates for text in c]
        every, _ = compute_rewards(
            [checker], [texts[i] for i in rows], flat, {k: [v[i] for i in rows] for k, v in columns.items()}
        )
        right = (every > 0.5).tolist()
        ends = torch.tensor([len(c) for c in generations.candidates]).cumsum(0).tolist()
        any_right = [any(right[end - len(c) : end]) for c, end in zip(generations.candidates, ends, strict=True)]
        metrics["exact_match/any_of_n"] = sum(any_right) / len(prompts)
    samples = [{"reference": ref, "correct": bool(ok)} for ref, ok in zip(references, correct.tolist(), strict=True)]
    return TaskResult(metrics, {"examples": len(prompts), "correct": int(correct.sum())}, samples)


def outcomes(scores: torch.Tensor, opponent: torch.Tensor, tie_margin: float = 0.0) -> torch.Tensor:
    """[P] scores of each side -> [P] 1.0 (win), 0.5 (tie: within ``tie_margin``) or 0.0 (loss)."""
    diff = scores - opponent
    return torch.where(diff.abs() <= tie_margin, 0.5, (diff > 0).float())


def win_rate(
    prompts: list[PromptExample],
    completions: list[str],
    opponent_completions: list[str],
    judge: tuple[RewardSource, RewardFn],
    tie_margin: float = 0.0,
) -> TaskResult:
    """How often the judge scores ``completions`` [P] above ``opponent_completions`` [P], ties counted as half."""
    n = len(prompts)
    columns = prompt_columns(prompts)
    # One call scores both sides, so a reward model sees them in the same batches.
    total, _ = compute_rewards(
        [judge],
        [p.prompt for p in prompts] * 2,
        list(completions) + list(opponent_completions),
        {k: v * 2 for k, v in columns.items()},
    )
    ours, theirs = total[:n], total[n:]
    result = outcomes(ours, theirs, tie_margin)
    same = torch.tensor([a == b for a, b in zip(completions, opponent_completions, strict=True)])
    result = torch.where(same, 0.5, result)
    metrics = {
        "win_rate": result.mean().item(),
        "win_rate/score": ours.mean().item(),
        "win_rate/opponent_score": theirs.mean().item(),
    }
    counts = {
        "examples": n,
        "wins": int((result == 1).sum()),
        "ties": int((result == 0.5).sum()),
        "losses": int((result == 0).sum()),
    }
    samples = [
        {"judge_score": a, "opponent_completion": text, "opponent_score": b, "win": w}
        for a, text, b, w in zip(ours.tolist(), opponent_completions, theirs.tolist(), result.tolist(), strict=True)
    ]
    return TaskResult(metrics, counts, samples)
