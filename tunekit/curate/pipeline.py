"""The curation pipeline: two streaming passes over the input files, then the cleaned file and its report.

Pass 1 reads every row once and decides its fate, in this order (the first reason that applies is the one
reported): PII is scrubbed; the row is dropped for an empty turn, too few or too many tokens, heavy n-gram
repetition or another language; then for sharing an n-gram with the evaluation files; then as an exact or near
duplicate of an earlier kept row; the survivors are scored when quality scoring is on. Only small per-row facts
stay in memory (one byte of decision, fingerprints, a score), never the rows. Between the passes the top
``quality.keep_fraction`` of the scores is chosen. Pass 2 reads the rows again and writes the kept ones, scrubbed,
as JSON Lines. Everything depends on the rows and the settings alone, so a rerun writes the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tunekit.curate.checks import LanguageId, normalise, repetition
from tunekit.curate.config import CurateConfig
from tunekit.curate.contamination import EvalNgrams
from tunekit.curate.dedup import ExactDuplicates, NearDuplicates
from tunekit.curate.pii import scrub_value
from tunekit.curate.rows import check_input, count_rows, detect, stream_rows, turns
from tunekit.errors import ConfigError
from tunekit.files import write_atomic

# Why a row was removed, in the order the checks run; index + 1 is the byte stored per row in pass 1 (0: kept).
REASONS = (
    "empty_turn",
    "too_short",
    "too_long",
    "repetition",
    "language",
    "contaminated",
    "exact_duplicate",
    "near_duplicate",
    "low_quality",
)


@dataclass
class Report:
    """What curation did; written as JSON and shown as a table."""

    inputs: list[str]
    output: str
    formats: dict[str, str]  # input file -> the format its rows were read in
    rows: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    # reason -> removed rows, each {"row": where, ...what it matched}; at most max_listed per reason except
    # contaminated, which lists them all.
    listed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)  # placeholders written into the output, by kind
    rows_with_pii: int = 0  # kept rows that had at least one replacement
    kept_tokens: int | None = None  # tokens of the kept rows' text, under the tokenizer (when it was needed)
    quality_threshold: float | None = None  # the lowest score kept
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The report as a plain-text table for the terminal."""
        lines = [f"{'':<18}{'rows':>9}{'share':>9}", f"{'read':<18}{self.rows:>9}{'':>9}"]
        for reason, count in self.removed.items():
            share = f"{count / self.rows:.1%}" if self.rows else "-"
            lines.append(f"{'- ' + reason:<18}{count:>9}{share:>9}")
        kept_share = f"{self.kept / self.rows:.1%}" if self.rows else "-"
        lines.append(f"{'kept':<18}{self.kept:>9}{kept_share:>9}")
        if self.pii:
            lines.append(f"{'PII replaced':<18}{'count':>9}")
            lines.extend(f"{'  ' + kind:<18}{count:>9}" for kind, count in sorted(self.pii.items()))
            lines.append(f"{'  rows touched':<18}{self.rows_with_pii:>9}")
        return "\n".join(lines)


def curate(config: CurateConfig) -> Report:
    """Curate ``config.inputs`` into ``config.output`` and its report (see the module docstring)."""
    files = _check_paths(config)
    report = Report([str(f) for f in files], str(config.output), {}, settings=asdict(config))
    checks = _Checks(config)
    decisions = bytearray()
    scores: dict[int, float] = {}
    pending: list[tuple[int, str]] = []
    scored_where: dict[int, str] = {}  # where each scored row is, for listing the ones dropped as low quality
    kept_tokens = 0
    total = _total(files)
    with tqdm(total=total, desc="curate: check", disable=not config.progress, file=sys.stderr) as bar:
        for i, (where, row, fmt) in enumerate(_rows(files, config, report.formats)):
            report.rows += 1
            bar.update(1)
            scrubbed = scrub_value(row, set(config.pii), {})
            parts = turns(scrubbed, fmt, config.columns(), where)
            reason, detail, tokens = checks.decide(parts, where)
            decisions.append(0 if reason is None else REASONS.index(reason) + 1)
            if reason is not None:
                report.removed[reason] += 1
                _list(report, reason, {"row": where, **detail}, config.max_listed)
                continue
            kept_tokens += tokens or 0
            if checks.scorer is not None:
                pending.append((i, "\n".join(parts)))
                scored_where[i] = where
                if len(pending) >= config.quality.batch_size:
                    scores.update(zip([j for j, _ in pending], checks.scorer([t for _, t in pending]), strict=True))
                    pending = []
        if pending and checks.scorer is not None:
            scores.update(zip([j for j, _ in pending], checks.scorer([t for _, t in pending]), strict=True))
    if checks.scorer is not None:
        _drop_low_quality(scores, scored_where, decisions, config.quality.keep_fraction, report, config.max_listed)
    report.kept_tokens = kept_tokens if checks.tokenizer is not None else None
    _write(files, config, decisions, report)
    return report


class _Checks:
    """The per-row checks of pass 1 with what they remember (fingerprints, the evaluation n-grams)."""

    def __init__(self, config: CurateConfig) -> None:
        from tunekit.curate.quality import Scorer
        from tunekit.models.load import load_tokenizer

        f = config.filters
        self.config = config
        self.tokenizer = load_tokenizer(config.tokenizer) if f.min_tokens > 1 or f.max_tokens is not None else None
        self.language = LanguageId() if f.languages else None
        d = config.decontaminate
        self.evals = EvalNgrams(d.paths, d.ngram, d.min_words) if d.paths else None
        self.exact = ExactDuplicates() if config.exact_duplicates else None
        n = config.near_duplicates
        self.near = NearDuplicates(n.threshold, n.num_perm, n.shingle) if n.enabled else None
        q = config.quality
        self.scorer = Scorer(q.method, q.model, q.batch_size, q.max_length) if q.method != "none" else None

    def decide(self, parts: list[str], where: str) -> tuple[str | None, dict[str, Any], int | None]:
        """``(reason or None, what to list with it, tokens)`` for a row whose texts are ``parts``."""
        f = self.config.filters
        if f.empty_turns and any(not part.strip() for part in parts):
            return "empty_turn", {}, None
        text = "\n".join(parts)
        tokens = None
        if self.tokenizer is not None:
            tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        elif f.min_tokens == 1 and not text.strip():
            tokens = 0
        if tokens is not None and tokens < f.min_tokens:
            return "too_short", {"tokens": tokens}, tokens
        if tokens is not None and f.max_tokens is not None and tokens > f.max_tokens:
            return "too_long", {"tokens": tokens}, tokens
        normalised = normalise(text)
        words = normalised.split()
        share = repetition(words, f.repetition_ngram)
        if share > f.max_repetition:
            return "repetition", {"repeated_share": round(share, 4)}, tokens
        if self.language is not None:
            language = self.language(text)
            if language not in f.languages:
                return "language", {"language": language}, tokens
        if self.evals is not None:
            match = self.evals.match(words)
            if match is not None:
                return "contaminated", {"eval_row": match[1], "ngram": match[0]}, tokens
        if self.exact is not None:
            earlier = self.exact.seen(normalised, where)
            if earlier is not None:
                return "exact_duplicate", {"duplicate_of": earlier}, tokens
        if self.near is not None:
            close = self.near.seen(words, where)
            if close is not None:
                return "near_duplicate", {"duplicate_of": close[0], "jaccard": round(close[1], 4)}, tokens
        return None, {}, tokens


def _check_paths(config: CurateConfig) -> list[Path]:
    if not config.inputs:
        raise ConfigError("curate needs inputs=<data file> (or a list: inputs=[a.jsonl,b.parquet])")
    if not config.output:
        raise ConfigError("curate needs output=<path of the cleaned .jsonl file>")
    files = [check_input(path) for path in config.inputs]
    output = Path(config.output).expanduser()
    if output.suffix.lower() != ".jsonl":
        raise ConfigError(f"output {config.output!r} must end in .jsonl (the cleaned rows are written as JSON Lines)")
    if any(output.resolve() == f.resolve() for f in files):
        raise ConfigError(f"output {config.output!r} is one of the inputs; write the cleaned rows to a new file")
    return files


def _total(files: list[Path]) -> int | None:
    counts = [count_rows(f) for f in files]
    return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]


def _rows(files: list[Path], config: CurateConfig, formats: dict[str, str]) -> Iterator[tuple[str, dict, str]]:
    """``(where, row, format)`` of every row of every file; a file's format is decided by its first row."""
    for file in files:
        fmt = None if config.format == "auto" else config.format
        for where, row in stream_rows(file):
            if fmt is None:
                fmt = detect(row, config.columns(), where)
            formats[str(file)] = fmt
            yield where, row, fmt


def _list(report: Report, reason: str, entry: dict[str, Any], limit: int) -> None:
    listed = report.listed.setdefault(reason, [])
    if reason == "contaminated" or len(listed) < limit:
        listed.append(entry)


def _drop_low_quality(
    scores: dict[int, float],
    wheres: dict[int, str],
    decisions: bytearray,
    keep_fraction: float,
    report: Report,
    limit: int,
) -> None:
    """Keep the best ``keep_fraction`` of the scored rows (ties: the earlier row first); mark the rest."""
    ranked = sorted(scores, key=lambda i: (-scores[i], i))
    keep = math.ceil(keep_fraction * len(ranked))
    if keep:
        report.quality_threshold = scores[ranked[keep - 1]]
    for i in sorted(ranked[keep:]):
        decisions[i] = REASONS.index("low_quality") + 1
        report.removed["low_quality"] += 1
        _list(report, "low_quality", {"row": wheres[i], "score": scores[i]}, limit)


# Characters other than \n and \r that Python's str.splitlines breaks lines at; JSON leaves them raw unless escaped,
# and a reader that splits a file's text into lines would cut a row in two.
_LINE_BREAKS = {ord(c): f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def json_line(row: dict[str, Any]) -> str:
    """``row`` as one JSON Lines line: non-ASCII text kept readable, every line-breaking character escaped."""
    return json.dumps(row, ensure_ascii=False).translate(_LINE_BREAKS) + "\n"


def _write(files: list[Path], config: CurateConfig, decisions: bytearray, report: Report) -> None:
    """Pass 2: the kept rows, scrubbed, as JSON Lines (renamed into place when complete), and the report."""
    output = Path(config.output).expanduser()  # type: ignore[arg-type]
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    kinds = set(config.pii)
    with (
        tmp.open("w", encoding="utf-8") as out,
        tqdm(total=report.rows, desc="curate: write", disable=not config.progress, file=sys.stderr) as bar,
    ):
        for i, (_, row, _) in enumerate(_rows(files, config, {})):
            bar.update(1)
            if decisions[i]:
                continue
            counts: dict[str, int] = {}
            out.write(json_line(scrub_value(row, kinds, counts)))
            report.kept += 1
            report.rows_with_pii += bool(counts)
            for kind, n in counts.items():
                report.pii[kind] = report.pii.get(kind, 0) + n
    os.replace(tmp, output)
    report_path = Path(config.report) if config.report else output.with_suffix(".report.json")
    write_atomic(report_path, json.dumps(asdict(report), indent=2, ensure_ascii=False) + "\n")
