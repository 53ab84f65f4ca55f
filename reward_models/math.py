"""Verifiable rewards for math word problems with a numeric final answer (GSM8K and friends).

Reward functions here follow tunekit's reward contract (see ``tunekit/rl/rewards.py``): they are called as
``fn(prompts=[...], completions=[...], **columns)`` with one list entry per completion and return one float per
completion. Data columns arrive as keyword arguments, so ``math_correct`` reads the row's ``answer`` column and
ignores the rest through ``**columns``.

This file is loaded by path, not imported as ``math``, so its name does not shadow the standard library; it still
avoids importing ``math`` itself in case someone runs it with ``reward_models/`` on ``sys.path``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

# One number as written in prose: an optional minus sign (ASCII or U+2212) that is not a subtraction or a range
# ("10-3", "3-5" give 3 and 5, not -3 and -5), an optional dollar sign, then digits with either correct
# thousands separators ("1,234,567", but never "1,234" out of "1,2345") or none, and an optional decimal part.
# The lookbehinds stop a match from starting in the middle of a number (never "23" out of "123" or "5" out of
# "1.5"), and a trailing full stop is left alone because the decimal part needs a digit after the point.
_NUMBER = re.compile(
    r"(?:(?<![\w)\]])(?P<neg>[-\u2212])\s*)?"
    r"\$?"
    r"(?<![\d.])"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)
_MARKER = "####"


def _normalise(match: re.Match[str]) -> str | None:
    """A matched number -> canonical text: no commas or $, no trailing zeros ("10.50" -> "10.5", "-0" -> "0")."""
    try:
        value = Decimal(match.group("num").replace(",", ""))
    except InvalidOperation:  # the pattern only admits valid decimals; this is a guard, not a path
        return None
    if match.group("neg"):
        value = -value
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def final_answer(text: str) -> str | None:
    """The final numeric answer of a solution, normalised, or None when there is none.

    GSM8K marks the answer with ``#### N``: when ``####`` occurs, the answer is the first number after its last
    occurrence, and a ``####`` followed by no number gives None rather than falling back to some number from the
    working (a model that writes "#### I don't know" has not answered). Without a marker, the answer is the last
    number in the text, the usual reading of a free-form "... so she makes $18." solution.

    Normalisation makes equal numbers compare equal as strings: "1,234" -> "1234", "$10" -> "10", "10.0" -> "10",
    "0.50" -> "0.5", "-7" stays "-7".
    """
    head, marker, tail = text.rpartition(_MARKER)
    if marker:
        match = _NUMBER.search(tail)
        return _normalise(match) if match else None
    matches = list(_NUMBER.finditer(text))
    return _normalise(matches[-1]) if matches else None


def math_correct(prompts: list[str], completions: list[str], answer: list[Any], **columns: Any) -> list[float]:
    """1.0 where a completion's final answer equals its row's reference answer, else 0.0.

    prompts, completions, answer: [N] each. ``answer`` may be a bare number ("18", 18, "1,600") or a whole GSM8K
    solution ending in "#### 18"; both are read with :func:`final_answer`. A reference with no number in it is a
    data error, not a wrong completion, so it raises instead of silently scoring 0 (tunekit's reward loader then
    names the row).
    """
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        expected = final_answer(str(reference))
        if expected is None:
            raise ValueError(f"the reference answer {str(reference)[-80:]!r} has no number to compare with")
        rewards.append(1.0 if final_answer(completion) == expected else 0.0)
    return rewards
