"""Streaming rows out of data files, and the text of a row in each format the recipes read.

Rows are read one at a time (JSON Lines line by line, Parquet by record batch, CSV by line), never all at once, so
a file larger than memory can be curated; a ``.json`` file holding one array is the exception (JSON has no way to
read an array piecewise) and is loaded whole. Every row comes with where it is (``train.jsonl line 12``) for the
report and for error messages.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunekit.errors import DataError

CurateFormat = Literal["auto", "text", "prompt_completion", "messages", "pairs", "prompts"]
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


@dataclass
class Columns:
    """Which column holds what; the same keys, with the same defaults, as the recipes' data sections."""

    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    chosen: str = "chosen"
    rejected: str = "rejected"


def check_input(path: str) -> Path:
    """``path`` as an existing data file of a supported kind, or a DataError saying what is wrong."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"input {path!r} does not exist (give .jsonl, .json, .parquet or .csv files)")
    if file.suffix.lower() not in SUFFIXES:
        raise DataError(f"input {path!r} has an unsupported extension {file.suffix!r} (use {', '.join(SUFFIXES)})")
    return file


def stream_rows(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for every row of ``file``, in order."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield f"{file} row {number}", row
        return
    if suffix in (".csv", ".tsv"):
        with open(file, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            for number, row in enumerate(reader, start=1):
                yield f"{file} row {number}", dict(row)
        return
    with open(file, encoding="utf-8-sig") as handle:
        first = handle.read(1)
        while first and first.isspace():
            first = handle.read(1)
        handle.seek(0)
        if suffix == ".json" and first == "[":
            try:
                rows = json.load(handle)
            except json.JSONDecodeError as err:
                raise DataError(f"{file} is not valid JSON: {err}") from None
            for number, row in enumerate(rows, start=1):
                if not isinstance(row, dict):
                    raise DataError(f"{file} row {number} is a {type(row).__name__}, expected a JSON object")
                yield f"{file} row {number}", row
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{file} line {number} is not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{file} line {number} is a JSON {type(row).__name__}, expected an object")
            yield f"{file} line {number}", row


def count_rows(file: Path) -> int | None:
    """Rows in ``file`` for the progress bar, counted cheaply (lines, or Parquet metadata); None if unknown."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    if suffix == ".json":
        return None
    lines = 0
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines - (1 if suffix in (".csv", ".tsv") else 0)


def detect(row: dict[str, Any], columns: Columns, where: str) -> str:
    """A row's format from its columns: messages, pairs, prompt_completion, text or prompts, in that order."""
    if columns.messages in row:
        return "messages"
    if columns.chosen in row and columns.rejected in row:
        return "pairs"
    if columns.prompt in row and columns.completion in row:
        return "prompt_completion"
    if columns.text in row:
        return "text"
    if columns.prompt in row:
        return "prompts"
    raise DataError(
        f"{where}: cannot tell the data format from its columns {sorted(row)}; expected {columns.text!r}, "
        f"{columns.prompt!r} (+ {columns.completion!r}), {columns.messages!r} or {columns.chosen!r} + "
        f"{columns.rejected!r}, or set format and the *_column keys"
    )


def turns(row: dict[str, Any], fmt: str, columns: Columns, where: str) -> list[str]:
    """The row's texts, one per turn or part: a text; a prompt and a completion; each message; a prompt (if any)
    and both responses; a prompt. A part that is a list of messages gives each message's content."""
    names = {
        "text": [columns.text],
        "prompt_completion": [columns.prompt, columns.completion],
        "messages": [columns.messages],
        "pairs": [columns.prompt, columns.chosen, columns.rejected],
        "prompts": [columns.prompt],
    }[fmt]
    out: list[str] = []
    for name in names:
        if name not in row or row[name] is None:
            if fmt == "pairs" and name == columns.prompt:
                continue  # implicit prompts: chosen and rejected are whole transcripts
            raise DataError(f"{where}: missing column {name!r} (the row has {sorted(row)})")
        out.extend(_texts(row[name], where, name))
    return out


def _texts(value: Any, where: str, column: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        return [m["content"] for m in value]
    raise DataError(f"{where}: column {column!r} must be a string or a list of messages with string content")
