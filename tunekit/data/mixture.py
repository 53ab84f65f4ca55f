"""Data mixtures: several sources, each with its own format keys, drawn together by weight.

A data section lists its sources under ``data.sources``; ``data.path`` stays the one-source shorthand. Each
source is read, checked and tokenized on its own (with its own columns and template, so a source's bad row is
named with the source), and the training items are then *drawn* from the sources:

- a source's share is ``m_s ** (1 / T) / sum_k m_k ** (1 / T)``, where ``m_s`` is its ``weight`` (default: its
  number of examples, i.e. examples-proportional mixing) and ``T`` is ``data.mixture.temperature`` (1: shares
  proportional to the masses; larger: flatter, towards uniform, as in multilingual T5's temperature sampling);
- without replacement (the default), source ``s`` gets exactly its quota of the draw (shares times the draw size,
  rounded by largest remainder), filled from seeded permutations of its examples: a down-weighted source gives a
  subset of distinct examples, an up-weighted one repeats each example ``floor`` or ``ceil`` times;
- with replacement, every slot picks its source by the shares and an example of it uniformly.

The draw is a function of the seed alone, and the runner reshuffles it each epoch from ``seed + epoch``, so the
data position of any step is still known from the step number and a resumed run sees the same batches.

This module holds the config and the drawing (pure Python); :mod:`tunekit.data.mixing` reads and tokenizes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

from tunekit.errors import InvalidValue, require

# A source's own keys that are not format keys: where its rows come from and how much of it to use.
T = TypeVar("T")

SOURCE_KEYS = ("name", "path", "weight", "split", "max_examples", "eval_path", "eval_split")


@dataclass
class DataSource:
    """One entry of ``data.sources``. Format keys left null take the data section's value."""

    # What summaries, errors and held-out metrics (eval/<name>/loss) call the source; default: the file's name without
    # its extension ("synthetic" for generated data).
    name: str | None = None
    # A .jsonl/.json/.parquet/.csv file, a dataset directory, a hub id, or "synthetic" (the recipe's generated data).
    path: str | None = None
    # The source's mass in the mixture (any positive number; shares are normalised); null: its number of examples.
    weight: float | None = None
    # Split of a dataset directory or hub dataset to read.
    split: str = "train"
    # Read only the first this many rows of the source (null: all); its held-out share is split from these.
    max_examples: int | None = None
    # Held-out rows of this source from a separate file (null: hold out data.eval_fraction of its rows).
    eval_path: str | None = None
    # Split of eval_path to read.
    eval_split: str = "train"
    # The row format (sft, pretrain): text, prompt_completion, messages or auto; null: data.format.
    format: Literal["auto", "text", "prompt_completion", "messages"] | None = None
    # This source's text column (sft, pretrain); null: data.text_column.
    text_column: str | None = None
    # This source's prompt column; null: data.prompt_column.
    prompt_column: str | None = None
    # This source's completion column (sft); null: data.completion_column.
    completion_column: str | None = None
    # This source's messages column (sft); null: data.messages_column.
    messages_column: str | None = None
    # This source's chosen column (reward, dpo); null: data.chosen_column.
    chosen_column: str | None = None
    # This source's rejected column (reward, dpo); null: data.rejected_column.
    rejected_column: str | None = None
    # This source's margin column (reward); null: data.margin_column.
    margin_column: str | None = None
    # How this source's string prompts are written ({prompt} is replaced); null: data.prompt_template.
    prompt_template: str | None = None
    # Where this source's implicit prompts end (reward, dpo); null: data.prompt_delimiter.
    prompt_delimiter: str | None = None

    def __post_init__(self) -> None:
        require(
            self.path is None or bool(self.path.strip()),
            "path",
            'is empty; give a data file, dataset directory, hub id or "synthetic"',
        )
        require(self.weight is None or self.weight > 0, "weight", f"must be positive (or null), got {self.weight}")
        require(
            self.max_examples is None or self.max_examples >= 1,
            "max_examples",
            f"must be at least 1 (or null for all), got {self.max_examples}",
        )
        require(self.name is None or bool(self.name.strip()), "name", "is empty; give a name or null")
        if self.name is not None:
            # The name becomes a metric key, eval/<name>/loss, and a folder in some trackers.
            require("/" not in self.name and " " not in self.name, "name", f"{self.name!r} must not hold '/' or spaces")

    def label(self) -> str:
        """The source's name: its own, or its path's last part without the extension."""
        if self.name:
            return self.name
        last = (self.path or "").rstrip("/").rsplit("/", 1)[-1]
        return last.rsplit(".", 1)[0] if "." in last else last

    def format_keys(self) -> dict[str, Any]:
        """The format keys this source sets (the others are null: the data section's apply)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in SOURCE_KEYS and getattr(self, f.name) is not None
        }


@dataclass
class MixtureConfig:
    """How ``data.sources`` are drawn into one training set (ignored with a single source)."""

    # Shares are weight ** (1 / temperature), normalised: 1 keeps them proportional to the weights; larger flattens
    # them towards uniform (temperature sampling).
    temperature: float = 1.0
    # false: each source gets exactly its share of the draw, from distinct examples as far as it has them (repeating
    # them evenly beyond); true: every slot draws a source by the shares and an example of it at random.
    replacement: bool = False
    # Training items drawn per epoch (null: as many as the sources hold in all).
    size: int | None = None

    def __post_init__(self) -> None:
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require(self.size is None or self.size >= 1, "size", f"must be at least 1 (or null), got {self.size}")


def check_sources(sources: list[DataSource], section: Any) -> None:
    """Each source's format keys must be keys of the data ``section`` (a DPO source has no completion column), and
    names must be unique; a mixture takes its paths from the sources, not from the section's path keys."""
    for k, source in enumerate(sources):
        require(source.path is not None, f"sources[{k}].path", 'is missing; give a file, hub id or "synthetic"')
        for key in source.format_keys():
            require(
                hasattr(section, key),
                f"sources[{k}].{key}",
                f"is not a key of this recipe's data section (its format keys: {', '.join(format_keys_of(section))})",
            )
        try:
            # The section as this source sets it: its own checks (a template without {prompt}) apply per source.
            dataclasses.replace(section, sources=[], **source.format_keys())
        except InvalidValue as err:
            raise InvalidValue(f"sources[{k}].{err.key}", err.message) from None
    names = [source.label() for source in sources]
    for k, name in enumerate(names):
        require(names.index(name) == k, f"sources[{k}].name", f"{name!r} is used by another source; give each a name")
    if sources:
        for key, default in (("path", "synthetic"), ("eval_path", None), ("max_examples", None)):
            value = getattr(section, key)
            require(value == default, key, f"is {value!r}: with data.sources, give it per source instead")


def format_keys_of(section: Any) -> list[str]:
    """The format keys a data section shares with :class:`DataSource`."""
    return [f.name for f in dataclasses.fields(DataSource) if f.name not in SOURCE_KEYS and hasattr(section, f.name)]


def shares(masses: list[float], temperature: float) -> list[float]:
    """``m ** (1 / temperature)`` normalised to sum to 1."""
    powered = [m ** (1.0 / temperature) for m in masses]
    total = sum(powered)
    return [p / total for p in powered]


def quotas(size: int, fractions: list[float]) -> list[int]:
    """``size`` split by ``fractions`` into whole numbers that sum to ``size`` (largest remainder; ties go to the
    earlier source)."""
    exact = [size * f for f in fractions]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    return counts


def draw(
    sizes: list[int], fractions: list[float], size: int, replacement: bool, seed: int, epoch: int = 0
) -> list[tuple[int, int]]:
    """Epoch ``epoch``'s ``size`` draws ``(source, example index)`` from sources of ``sizes`` examples, by
    ``fractions``; a function of the arguments alone. The order is by source (the runner shuffles each epoch).

    Without replacement, source ``s`` walks through a stream of seeded permutations of its examples, ``quota`` at a
    time: epoch ``e`` takes positions ``[e * quota, (e + 1) * quota)``, so every example is seen before any is seen
    again, within an epoch and across epochs.
    """
    picked: list[tuple[int, int]] = []
    if replacement:
        rng = random.Random(f"tunekit-mixture/{seed}/epoch-{epoch}")
        for s in rng.choices(range(len(sizes)), weights=fractions, k=size):
            picked.append((s, rng.randrange(sizes[s])))
        return sorted(picked)
    for s, quota in enumerate(quotas(size, fractions)):
        n = sizes[s]
        begin, end = epoch * quota, (epoch + 1) * quota
        for p in range(begin // n, -(-end // n)):
            order = list(range(n))
            random.Random(f"tunekit-mixture/{seed}/{s}/pass-{p}").shuffle(order)
            picked.extend((s, order[j - p * n]) for j in range(max(begin, p * n), min(end, (p + 1) * n)))
    return picked


class EpochDraws(Sequence[T]):
    """A mixture's training items: ``size`` of them, drawn afresh each epoch from ``pools`` (one list of items per
    source). The runner asks for epoch ``e``'s with :meth:`for_epoch`; indexing it directly (packing, a summary)
    gives epoch 0's."""

    def __init__(self, pools: list[list[T]], fractions: list[float], size: int, replacement: bool, seed: int) -> None:
        self.pools = pools
        self.fractions = fractions
        self.size = size
        self.replacement = replacement
        self.seed = seed
        self.first = self._items(0)
        self._cached: tuple[int, list[T]] = (0, self.first)

    def _items(self, epoch: int) -> list[T]:
        sizes = [len(pool) for pool in self.pools]
        picked = draw(sizes, self.fractions, self.size, self.replacement, self.seed, epoch)
        return [self.pools[s][i] for s, i in picked]

    def for_epoch(self, epoch: int) -> list[T]:
        """The items of epoch ``epoch`` (0-based)."""
        if self._cached[0] != epoch:
            self._cached = (epoch, self._items(epoch))
        return self._cached[1]

    def drawn(self, epoch: int = 0) -> list[int]:
        """Items drawn from each source in epoch ``epoch``."""
        items = self.for_epoch(epoch)
        ids = [{id(item) for item in pool} for pool in self.pools]
        return [sum(1 for item in items if id(item) in pool_ids) for pool_ids in ids]

    @property
    def pool(self) -> list[T]:
        """Every source's items, each once: what work done once per item (reference log-probs) covers."""
        return [item for pool in self.pools for item in pool]

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        return self.first[i]
