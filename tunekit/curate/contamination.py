"""Decontamination: rows sharing a long word n-gram with an evaluation file are removed, and listed.

Every string of every row of the evaluation files (a GSM8K test question, its worked answer) gives its word
``n``-grams after normalisation; a training row is contaminated when any of its own n-grams is among them. An
evaluation string shorter than ``n`` words but at least ``min_words`` long counts as one n-gram of its own length,
so that short test questions are caught too; shorter strings (a bare "#### 72") are too common to mean anything
and are skipped. 13 words is the span GPT-3's authors used against their benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunekit.curate.checks import ngrams, normalise
from tunekit.curate.rows import check_input, stream_rows


class EvalNgrams:
    """The n-grams of the evaluation files, each mapped to the first evaluation row that holds it."""

    def __init__(self, paths: list[str], n: int, min_words: int) -> None:
        self.n = n
        self.files = [str(check_input(path)) for path in paths]
        self.grams: dict[str, str] = {}  # n-gram -> where in the evaluation files
        self.short: dict[int, dict[str, str]] = {}  # length -> whole short strings of that many words
        self.rows = 0
        for path in paths:
            for where, row in stream_rows(Path(path).expanduser()):
                self.rows += 1
                for text in _strings(row):
                    words = normalise(text).split()
                    if len(words) >= n:
                        for gram in ngrams(words, n):
                            self.grams.setdefault(gram, where)
                    elif len(words) >= min_words:
                        self.short.setdefault(len(words), {}).setdefault(" ".join(words), where)

    def match(self, words: list[str]) -> tuple[str, str] | None:
        """``(n-gram, where in the evaluation files)`` of the first of ``words``' n-grams found there, or None."""
        for gram in ngrams(words, self.n):
            if gram in self.grams:
                return gram, self.grams[gram]
        for length, whole in self.short.items():
            for gram in ngrams(words, length):
                if gram in whole:
                    return gram, whole[gram]
        return None


def _strings(value: Any) -> list[str]:
    """Every string inside a row (its columns, messages' contents)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []
