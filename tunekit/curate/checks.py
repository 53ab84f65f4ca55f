"""Per-row measures the curation filters read: normalised text, words, n-gram repetition and language.

Normalisation (NFKC, lower case, punctuation dropped, whitespace collapsed) is what "the same text" means for
exact duplicates, and it makes the word n-grams of near-duplicate detection and decontamination blind to case,
spacing and punctuation.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from tunekit.errors import ConfigError

_NON_WORD = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFKC, lower case, punctuation removed, runs of whitespace as one space, trimmed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text)).strip()


def digest(normalised: str) -> bytes:
    """A 16-byte fingerprint of normalised text: exact-duplicate detection keeps these, not the rows."""
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def ngrams(words: list[str], n: int) -> list[str]:
    """The word ``n``-grams of ``words``, each joined by spaces; a text shorter than ``n`` gives none."""
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def repetition(words: list[str], n: int) -> float:
    """The share of a text's word ``n``-grams that repeat an earlier one (0: none repeats; near 1: a loop).

    Generated junk that loops ("the the the", a line pasted 20 times) scores high; ordinary prose and worked
    answers stay low. A text with fewer than ``n`` words scores 0.
    """
    grams = ngrams(words, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


class LanguageId:
    """Language identification with py3langid (offline, its model ships inside the package)."""

    def __init__(self) -> None:
        try:
            import py3langid
        except ImportError:
            raise ConfigError(
                'filters.languages needs py3langid: pip install "tunekit[curate]" (or leave filters.languages empty)'
            ) from None
        self._classify: Any = py3langid.classify

    def __call__(self, text: str) -> str:
        """The ISO 639-1 code of ``text``'s most likely language."""
        return str(self._classify(text)[0])
