"""``samples.jsonl``: a few prompts, completions and their scores every ``sample_every`` steps, to read a run by eye.

Each line is ``{"step", "prompt", "completion", <score name>}``, with ``step`` the optimizer step whose rollouts
they are; a rollout that called tools adds ``tool_calls`` (each call's name, arguments, output, ok and error), and
every completion with a failed call is written at every step, sampled or not. A resumed run first drops the lines
from its checkpoint's step on, which it is about to write again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tunekit.rl.rollout import Rollout
from tunekit.train.log import drop_records_from
from tunekit.train.trackers import log_samples


class SampleLog:
    """Appends sample lines from the main process; ``resume_step`` is the step a resumed run starts at."""

    def __init__(self, path: Path, every: int, resume_step: int | None = None) -> None:
        self.path = path
        self.every = every
        self.main = os.environ.get("RANK", "0") == "0"
        if self.main and resume_step is not None:
            drop_records_from(path, resume_step)

    def due(self, step: int) -> bool:
        return self.main and self.every > 0 and step % self.every == 0

    def write(self, step: int, rollout: Rollout, scores: torch.Tensor, rows: int, score_name: str) -> None:
        """The first ``rows`` completions of ``rollout`` with their ``scores`` [N]; also the run's samples table in
        the experiment trackers that have tables (train.report_to)."""
        lines = [self._line(step, rollout, scores, i, score_name) for i in range(min(rows, len(scores)))]
        self._append(lines)
        log_samples(step, lines)

    def write_tool_failures(
        self, step: int, rollout: Rollout, scores: torch.Tensor, score_name: str, after: int = 0
    ) -> None:
        """Every completion from row ``after`` on (the rows before are written already) with a tool call that
        failed: each failure of a tool is logged, not only the sampled ones."""
        calls = rollout.columns.get("tool_calls")
        if not self.main or calls is None:
            return
        failed = [i for i in range(after, len(calls)) if any(not call["ok"] for call in calls[i])]
        if failed:
            self._append([self._line(step, rollout, scores, i, score_name) for i in failed])

    @staticmethod
    def _line(step: int, rollout: Rollout, scores: torch.Tensor, i: int, score_name: str) -> dict:
        line = {
            "step": step,
            "prompt": rollout.prompts[i],
            "completion": rollout.completions[i],
            score_name: float(scores[i]),
        }
        if "tool_calls" in rollout.columns:
            line["tool_calls"] = rollout.columns["tool_calls"][i]
        return line

    def _append(self, lines: list[dict]) -> None:
        with self.path.open("a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
