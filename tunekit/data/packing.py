"""Packing several short examples into rows of at most ``max_length`` tokens.

Best-fit decreasing: examples are placed longest first into the row with the least room that still fits them,
which wastes little space and is deterministic. Each packed row later gets a block-diagonal causal mask and
position ids that restart per example (see :mod:`tunekit.data.collate`), so packing never changes what an
example sees.
"""

from __future__ import annotations

import bisect

from tunekit.data.sft import Example


def pack_examples(examples: list[Example], max_length: int) -> list[list[Example]]:
    """Group ``examples`` into rows whose total length is at most ``max_length`` (input order kept within a row)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    # (room left, row id), kept sorted so the best-fitting row is found by bisection.
    room: list[tuple[int, int]] = []
    for i in order:
        length = len(examples[i].input_ids)
        if length > max_length:
            raise ValueError(f"example {examples[i].index} has {length} tokens, more than max_length={max_length}")
        at = bisect.bisect_left(room, (length, -1))
        if at < len(room):
            left, row_id = room.pop(at)
            rows[row_id].append(i)
            bisect.insort(room, (left - length, row_id))
        else:
            rows.append([i])
            bisect.insort(room, (max_length - length, len(rows) - 1))
    return [[examples[i] for i in sorted(row)] for row in rows]
