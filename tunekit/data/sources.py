"""Reading rows from local files, saved dataset directories and hub ids, with positions for error messages.

Rows come back as plain dicts together with a way to name each one ("data.jsonl line 12"), so that every later
check can point the user at the exact row at fault. JSON Lines files are parsed here, line by line, because a
malformed line should be reported by its line number rather than as a parser error from deep inside a library.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunekit.data.mixture import DataSource, MixtureConfig, check_sources
from tunekit.data.synthetic import Generator, generator_for, is_synthetic
from tunekit.errors import ConfigError, DataError, require

_TABULAR = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}


@dataclass
class Rows:
    """Rows of one data source; ``positions[i]`` is row i's 1-based line (JSON Lines) or row number in it."""

    source: str
    rows: list[dict[str, Any]]
    positions: list[int] | None = None
    unit: str = "row"

    def __post_init__(self) -> None:
        if self.positions is None:
            self.positions = list(range(1, len(self.rows) + 1))

    def where(self, i: int) -> str:
        """Human-readable position of row ``i``: ``"train.jsonl line 12"`` or ``"train.parquet row 12"``."""
        return f"{self.source} {self.unit} {self.positions[i]}"  # type: ignore[index]

    def subset(self, indices: list[int]) -> Rows:
        """The rows at ``indices``, each keeping its original position."""
        return Rows(self.source, [self.rows[i] for i in indices], [self.positions[i] for i in indices], self.unit)  # type: ignore[index]

    def __len__(self) -> int:
        return len(self.rows)


def read_rows(path: str, split: str = "train") -> Rows:
    """Rows of a jsonl/json/parquet/csv file, a dataset directory (``save_to_disk`` or data files) or a hub id."""
    local = Path(path).expanduser()
    if local.is_file():
        suffix = local.suffix.lower()
        if suffix in (".jsonl", ".json"):
            return _read_json(local)
        if suffix in _TABULAR:
            if _TABULAR[suffix] == "csv":
                _utf8_text(local)  # a readable message, naming the line, before the csv reader's own
            rows = _load_with_datasets(_TABULAR[suffix], str(local), split, data_files=str(local))
            return Rows(str(local), [_without_bom(row) for row in rows] if _TABULAR[suffix] == "csv" else rows)
        raise DataError(
            f"data file {local} has an unsupported extension {suffix!r} (use .jsonl, .json, .parquet, .csv)"
        )
    if local.is_dir():
        if (local / "dataset_dict.json").is_file() or (local / "dataset_info.json").is_file():
            return Rows(str(local), _load_from_disk(local, split))
        return Rows(str(local), _load_with_datasets(str(local), str(local), split))
    if path.startswith((".", "/", "~")) or Path(path).suffix.lower() in (".jsonl", ".json", *_TABULAR):
        raise DataError(f"data path {path!r} does not exist")
    return Rows(path, _load_with_datasets(path, path, split))


def _utf8_text(path: Path) -> str:
    """The file's text, without the byte-order mark that files saved on Windows or from spreadsheets begin with; a
    byte that is not UTF-8 is a DataError naming its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"{path} line {line} is not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {column}); save the file "
            "as UTF-8"
        ) from None


def _without_bom(row: dict[str, Any]) -> dict[str, Any]:
    """A csv row whose first column name kept the file's byte-order mark, without it."""
    return {key.lstrip("\ufeff") if isinstance(key, str) else key: value for key, value in row.items()}


def _read_json(path: Path) -> Rows:
    text = _utf8_text(path)
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON: {err}") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{path} row {i + 1} is a {type(row).__name__}, expected a JSON object")
        return Rows(str(path), rows)
    rows, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {lineno} is not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {lineno} is a JSON {type(row).__name__}, expected an object")
        rows.append(row)
        lines.append(lineno)
    return Rows(str(path), rows, lines, unit="line")


def _load_from_disk(path: Path, split: str) -> list[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(path))
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise DataError(f"dataset directory {path} has no split {split!r}; it has: {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded.to_list()


def _load_with_datasets(name: str, shown: str, split: str, **kwargs: Any) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        return load_dataset(name, split=split, **kwargs).to_list()
    except ValueError as err:
        raise DataError(f"data {shown!r} could not be read (split {split!r}): {err}") from None
    except Exception as err:  # datasets raises connection, file-not-found and format errors of many classes
        raise DataError(f"data {shown!r} could not be loaded: {type(err).__name__}: {err}") from None


@dataclass
class SourceConfig:
    """Where a recipe's rows come from; every recipe's ``data`` section extends this."""

    # A .jsonl/.json/.parquet/.csv file, a dataset directory, a hub id, or "synthetic" (tunekit's own data; the
    # generated tasks big-arithmetic and big-arithmetic-tools as "synthetic:<task>", docs/tools.md).
    path: str = "synthetic"
    # Split of a dataset directory or hub dataset to read; a single file is one split, train.
    split: str = "train"
    # Held-out data from a separate source, in any form path takes (null: hold out eval_fraction of the training rows
    # instead). Ignored when path is "synthetic".
    eval_path: str | None = None
    # Split of eval_path to read, as split is for path.
    eval_split: str = "train"
    # Without eval_path: the share of the training rows held out for evaluation, drawn with seed; with path "synthetic",
    # that share of synthetic_size is generated as fresh held-out rows. 0: no held-out data.
    eval_fraction: float = 0.05
    # Training rows generated when path is "synthetic" (ignored otherwise).
    synthetic_size: int = 2000
    # Read only the first this many rows of path (null: all); a held-out share is split from these. Generated data and
    # eval_path are not capped.
    max_examples: int | None = None
    # Rows whose part to learn from is empty or only whitespace (a completion, a chosen or rejected response, every
    # assistant turn, a text, an RL prompt): drop them and count them in the data summary, or stop with an error
    # naming the first. Such rows are usually an export fault, and trained on they teach the model to say nothing.
    empty_rows: Literal["drop", "error"] = "drop"
    # Several sources mixed by weight (docs/data-mixtures.md), each {name, path, weight, split, max_examples,
    # eval_path, eval_split} plus its own format keys (columns, template); [] (the default): path is the one source.
    sources: list[DataSource] = field(default_factory=list)
    # How data.sources are drawn into one training set: by weight with a temperature, with or without replacement.
    mixture: MixtureConfig = field(default_factory=MixtureConfig)

    def __post_init__(self) -> None:
        require(bool(self.path.strip()), "path", 'is empty; give a data file, dataset directory, hub id or "synthetic"')
        require(self.eval_path is None or bool(self.eval_path.strip()), "eval_path", "is empty; give a path or null")
        require(0 <= self.eval_fraction < 1, "eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        require(self.synthetic_size >= 1, "synthetic_size", f"must be at least 1, got {self.synthetic_size}")
        require(
            self.max_examples is None or self.max_examples >= 1,
            "max_examples",
            f"must be at least 1 (or null for all), got {self.max_examples}",
        )
        check_sources(self.sources, self)


def empty_row(rows: Rows, i: int, what: str, policy: str) -> None:
    """Row ``i`` has nothing to learn from (``what`` is empty): a DataError naming it under ``empty_rows=error``;
    under ``drop`` the caller drops and counts it."""
    if policy == "error":
        raise DataError(f"{rows.where(i)}: {what} is empty (data.empty_rows=error; set it to drop to skip such rows)")


def require_prompt_template(template: str) -> None:
    """A section's ``prompt_template`` must place the prompt somewhere: without ``{prompt}`` every row would
    train or generate from the same text."""
    require("{prompt}" in template, "prompt_template", f"{template!r} must contain {{prompt}}")


def train_eval_rows(config: SourceConfig, seed: int, synthetic: Generator) -> tuple[Rows, Rows | None]:
    """Training rows and held-out rows (or None) for ``config``; ``synthetic(n, seed, split)`` makes generated rows."""
    if config.sources:
        # The loaders read a mixture through tunekit.data.mixing; a caller that reads rows itself takes one source.
        raise ConfigError("data.sources: this command reads a single source; give data.path instead")
    if is_synthetic(config.path):
        synthetic = generator_for(config.path, synthetic)  # "synthetic:<task>": another generated task
        n_eval = max(1, int(config.synthetic_size * config.eval_fraction)) if config.eval_fraction > 0 else 0
        train = Rows("synthetic", synthetic(config.synthetic_size, seed, "train"))
        # Held-out rows come from the reserved part of the problem space, which no generated training set holds.
        return train, Rows("synthetic-eval", synthetic(n_eval, seed + 10_000, "held_out")) if n_eval else None
    train = read_rows(config.path, config.split)
    held_out = read_rows(config.eval_path, config.eval_split) if config.eval_path else None
    if config.max_examples is not None:
        train = train.subset(list(range(min(config.max_examples, len(train)))))
    if held_out is None and config.eval_fraction > 0:
        train, held_out = split_off(train, config.eval_fraction, seed)
    return train, held_out


def split_off(rows: Rows, fraction: float, seed: int) -> tuple[Rows, Rows | None]:
    """Hold out ``fraction`` of ``rows`` (chosen with ``seed``), keeping each row's position for errors."""
    n_eval = int(len(rows) * fraction)
    if n_eval == 0 or n_eval >= len(rows):
        return rows, None
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return rows.subset(sorted(order[n_eval:])), rows.subset(sorted(order[:n_eval]))
