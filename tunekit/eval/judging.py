"""The judge tasks of an evaluation: what a judge makes of the model's completions (``judge``), and how far the
judge itself agrees with human labels (``agreement``), measured before it is trusted.

Both take the judge of the eval config's ``judge`` section: an LLM judge with a rubric, a reward model or a reward
function (see :mod:`tunekit.judges`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from tunekit.data import synthetic
from tunekit.data.pairs import implicit_prompt
from tunekit.data.sources import Rows, read_rows
from tunekit.errors import DataError, require
from tunekit.eval.data import first_rows
from tunekit.eval.tasks import TaskResult
from tunekit.judges import Judge
from tunekit.judges.load import JudgeConfig
from tunekit.judges.verdict import cohen_kappa


@dataclass
class JudgeTaskConfig(JudgeConfig):
    # The judge task with a pairwise judge: whom the model's completions are compared with, "reference" (the data's
    # completion_column) or a model that generates with the same settings. Pointwise judges score the completions
    # alone.
    opponent: str = "reference"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.opponent.strip()), "opponent", 'is empty; give "reference" or a model')


@dataclass
class AgreementConfig:
    # Human-labelled pairs the judge is checked against: a .jsonl/.json/.parquet/.csv file, a dataset directory, a
    # hub id, or "synthetic" (tunekit's arithmetic pairs, right answer over wrong). hh-rlhf's files
    # (../shared/data/hh-rlhf) are read as they are: the prompt is the conversation up to the last "Assistant:".
    path: str = "synthetic"
    # Split of a dataset directory or hub dataset.
    split: str = "train"
    # The prompt; rows without it have an implicit prompt, the shared beginning of chosen and rejected up to
    # prompt_delimiter.
    prompt_column: str = "prompt"
    # The response the human preferred.
    chosen_column: str = "chosen"
    # The response the human rejected.
    rejected_column: str = "rejected"
    # Where an implicit prompt ends.
    prompt_delimiter: str = "\n\nAssistant:"
    # Judge only the first this many pairs (null: all).
    max_examples: int | None = 200

    def __post_init__(self) -> None:
        require(bool(self.path.strip()), "path", 'is empty; give a pairs file, dataset or "synthetic"')
        require(
            self.max_examples is None or self.max_examples >= 1,
            "max_examples",
            f"must be at least 1 (or null for all), got {self.max_examples}",
        )


def judge_is_pairwise(config: JudgeConfig) -> bool:
    """Whether the judge compares two responses (an LLM judge with a pairwise rubric) rather than scoring one."""
    if not config.is_llm:
        return False
    from tunekit.judges.rubric import load_rubric

    return load_rubric(config.rubric).kind == "pairwise"


def judge_task(
    judge: Judge,
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
    opponent: list[str] | None,
    pairwise: bool,
) -> TaskResult:
    """``judge`` on [P] completions: a pointwise judge's mean score (``judge/score``) and, for a rubric, the mean
    probability of each answer (``judge/p_<answer>``); a pairwise judge's win rate against ``opponent`` [P]
    (``judge`` = mean P(ours better), ties counting half) with its order consistency."""
    n = len(completions)
    if pairwise:
        assert opponent is not None
        verdict = judge.compare(prompts, completions, opponent, columns)
        same = torch.tensor([a == b for a, b in zip(completions, opponent, strict=True)])
        prob = torch.where(same, 0.5, verdict.prob_first)
        metrics = {"judge": prob.mean().item(), "judge/consistency": verdict.consistent.float().mean().item()}
        samples = [
            {"judge_prob": p, "judge_consistent": bool(c), "opponent_completion": o}
            for p, c, o in zip(prob.tolist(), verdict.consistent.tolist(), opponent, strict=True)
        ]
        wins = int((prob > 0.5).sum())
        return TaskResult(metrics, {"examples": n, "wins": wins, "losses": int((prob < 0.5).sum())}, samples)
    probs = getattr(judge, "score_probs", None)
    if probs is not None:
        distribution = probs(prompts, completions, columns)  # [P, C]
        scores = distribution @ torch.tensor(judge.rubric.values, dtype=torch.float32)
        metrics = {"judge": scores.mean().item()}
        for choice, share in zip(judge.rubric.choices, distribution.mean(0).tolist(), strict=True):
            metrics[f"judge/p_{choice}"] = share
    else:
        scores = judge.score(prompts, completions, columns)
        metrics = {"judge": scores.mean().item()}
    return TaskResult(metrics, {"examples": n}, [{"judge_score": s} for s in scores.tolist()])


def agreement_pairs(config: AgreementConfig, seed: int) -> tuple[list[str], list[str], list[str], dict[str, list[Any]]]:
    """(prompts, chosen, rejected) [N] of the human-labelled pairs and their rows' other columns (name -> [N], for
    reward functions and rubric fields); a DataError naming the row at fault."""
    if config.path == "synthetic":
        generated = synthetic.preference_pairs(config.max_examples or 200, seed + 20_000, "held_out")
        # The generated pairs carry their reference answer (the chosen one's "#### N"), as a checker needs.
        generated = [{**row, "answer": row["chosen"].rsplit("####", 1)[-1].strip()} for row in generated]
        rows = Rows("synthetic-pairs", generated)
    else:
        rows = read_rows(config.path, config.split)
    rows = first_rows(rows, config.max_examples)
    prompts, chosen, rejected = [], [], []
    for i, row in enumerate(rows.rows):
        where = rows.where(i)
        good, bad = row.get(config.chosen_column), row.get(config.rejected_column)
        for column, value in ((config.chosen_column, good), (config.rejected_column, bad)):
            if not isinstance(value, str):
                raise DataError(f"{where}: column {column!r} must be a string (the row has {sorted(row)})")
        prompt = row.get(config.prompt_column)
        if prompt is None:
            prompt = implicit_prompt(good, bad, config.prompt_delimiter)
            if not prompt:
                raise DataError(
                    f"{where}: no {config.prompt_column!r} column and no shared beginning ending in "
                    f"{config.prompt_delimiter!r}; add a prompt column or set agreement.prompt_delimiter"
                )
            good, bad = good[len(prompt) :], bad[len(prompt) :]
        elif not isinstance(prompt, str):
            raise DataError(f"{where}: column {config.prompt_column!r} must be a string")
        prompts.append(prompt)
        chosen.append(good)
        rejected.append(bad)
    used = {config.prompt_column, config.chosen_column, config.rejected_column}
    names = sorted({k for row in rows.rows for k in row} - used)
    return prompts, chosen, rejected, {k: [row.get(k) for row in rows.rows] for k in names}


def agreement_task(judge: Judge, config: AgreementConfig, seed: int) -> TaskResult:
    """The judge's verdicts on human-labelled pairs: ``agreement`` (accuracy: it prefers the human's choice),
    ``agreement/consistency`` (both orders pick the same winner), ``agreement/kappa`` (Cohen's kappa between the
    position the human chose and the one the judge chose, each pair shown in a seeded random order, so that a judge
    that always picks one position scores 0)."""
    prompts, chosen, rejected, columns = agreement_pairs(config, seed)
    n = len(prompts)
    chosen_first = [random.Random(seed + i).random() < 0.5 for i in range(n)]
    first = [c if f else r for c, r, f in zip(chosen, rejected, chosen_first, strict=True)]
    second = [r if f else c for c, r, f in zip(chosen, rejected, chosen_first, strict=True)]
    verdict = judge.compare(prompts, first, second, columns)
    picks_first = verdict.prob_first > 0.5
    human_first = torch.tensor(chosen_first)
    agrees = picks_first == human_first
    metrics = {
        "agreement": agrees.float().mean().item(),
        "agreement/consistency": verdict.consistent.float().mean().item(),
        "agreement/kappa": cohen_kappa(picks_first.long(), human_first.long()),
    }
    return TaskResult(metrics, {"examples": n, "agreed": int(agrees.sum())})
