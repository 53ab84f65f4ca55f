"""Shape rewards: does a completion follow the requested format, and is it about the right length.

Both follow tunekit's reward contract (``fn(prompts=..., completions=..., **columns) -> list[float]``, one float per
completion); their own options (``pattern``, ``target_chars``) come from the ``kwargs`` of a recipe's reward entry.
"""

from __future__ import annotations

import re
from typing import Any

# A GSM8K-style answer line closing the completion: "#### 18", "#### -3", "#### 1,600", "#### 2.5".
GSM8K_ANSWER_LINE = r"#### -?[\d,.]+\s*$"


def format_regex(
    prompts: list[str], completions: list[str], *, pattern: str = GSM8K_ANSWER_LINE, **columns: Any
) -> list[float]:
    """1.0 for each completion in which ``re.search(pattern, completion)`` finds a match, else 0.0.

    completions: [N] -> [N]. The pattern is searched, not fully matched: anchor it (``^``, ``$``) where position
    matters. ``$`` matches at the end of the text (or before one final newline), not at every line end.
    """
    regex = re.compile(pattern)
    return [1.0 if regex.search(completion) else 0.0 for completion in completions]


def length_penalty(
    prompts: list[str], completions: list[str], *, target_chars: int = 200, **columns: Any
) -> list[float]:
    """0 for completions up to ``target_chars`` characters, then -(len - target) / target, floored at -1.

    completions: [N] -> [N], each in [-1, 0]. A completion twice the target or longer gets the full -1, so the
    penalty cannot outweigh a correctness reward of weight 1 on its own however long the rambling.
    """
    if target_chars <= 0:
        raise ValueError(f"target_chars must be a positive number of characters, got {target_chars}")
    return [max(-1.0, -(len(c) - target_chars) / target_chars) if len(c) > target_chars else 0.0 for c in completions]
