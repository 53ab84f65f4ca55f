"""metrics.jsonl and the progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl``; a resumed run first drops later lines."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None:
            drop_records_from(path, resume_step + 1)
        self._file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def drop_records_from(path: Path, step: int) -> None:
    """Remove the lines of a JSON Lines log whose ``"step"`` is ``step`` or later: what a resumed run writes again."""
    if path.exists():
        kept = [line for line, record in _parsed_lines(path) if record["step"] < step]
        path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, one JSON object a line."""
    return [record for _, record in _parsed_lines(Path(path))]


def _parsed_lines(path: Path) -> list[tuple[str, Any]]:
    """Each non-empty line of a JSON Lines file with what it parses to. A last line cut short (no newline, not
    JSON: the process was killed while writing it) is left out; a line that is not JSON elsewhere raises
    ``ValueError``."""
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line)))
        except ValueError:
            if i == len(lines) - 1 and not text.endswith("\n"):
                break
            raise
    return out


class Progress:
    """A tqdm bar over optimizer steps showing loss, lr and tokens/s (quiet when disabled)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
            desc="train",
        )

    def update(self, record: dict[str, Any]) -> None:
        shown = {"loss": record.get("loss"), "lr": record.get("lr"), "tok/s": record.get("tokens_per_s")}
        self.bar.set_postfix({k: _short(v) for k, v in shown.items() if v is not None}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
