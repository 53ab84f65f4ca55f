"""The segments of a padding-free row: which examples, and which shared prompts, one row of tokens holds.

The batches the data layer builds carry them, and the attention of :mod:`tunekit.fast.varlen` reads them; the
type lives here, in the lower layer, so that data never imports the models.
"""

from __future__ import annotations

from collections.abc import Iterator


class Segments:
    """The segments of a padding-free row (tuples of ints: ``(L,)`` one example, ``(L0, L1, ..., Lk)`` a prompt
    of L0 tokens shared by k continuations), in a container torch.compile does not look into: a plain list would
    be guarded on its length, and every batch with a new number of examples would recompile the compiled blocks
    (train.compile) that pass it on to the attention."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[int, ...]]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
