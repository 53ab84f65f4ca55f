"""Reading a list of sources and mixing them: the one seam every recipe's data loader goes through.

The SFT, pair and prompt loaders each turn rows into items with their own ``tokenize(rows, section)``; given
``data.sources`` they call :func:`load_mixture` with it instead of reading ``data.path``. Each source is read and
tokenized with the data section as that source sets it (its own path, columns and template), so sft, pretrain,
reward, dpo, grpo and ppo all take mixtures with no code of their own. Errors inside a source are re-raised with
the source named in front of the file and row. The training items are an :class:`~tunekit.data.mixture.EpochDraws`,
drawn afresh each epoch by :func:`tunekit.data.mixture.draw`;
the held-out items of every source are kept whole, together (for eval/loss) and per source (for
eval/<source>/loss, see :func:`source_losses`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tunekit.data.mixture import EpochDraws, shares
from tunekit.data.sources import SourceConfig, train_eval_rows
from tunekit.data.synthetic import Generator
from tunekit.errors import ConfigError, DataError, InvalidValue

# tokenize(rows, section) -> (items, stats): stats is a dataclass of counts (TokenizeStats, PairStats) or an int.
Tokenize = Callable[[Any, Any], tuple[list[Any], Any]]


class HeldOut(list):
    """Held-out items of every source, in source order; ``by_source`` maps each source's name to its own."""

    by_source: dict[str, list[Any]]

    def __init__(self, by_source: dict[str, list[Any]]) -> None:
        super().__init__(item for items in by_source.values() for item in items)
        self.by_source = by_source


@dataclass
class SourceData:
    name: str
    train: list[Any]
    held_out: list[Any]
    stats: dict[str, Any]  # "train" and, with held-out rows, "eval" -> the tokenizer's stats


@dataclass
class Mixture:
    """Every source's items, and the training draw."""

    sources: list[SourceData]
    train: EpochDraws
    held_out: HeldOut
    drawn: list[int]  # training items drawn from each source in epoch 0
    fractions: list[float]  # each source's share of the draw
    description: str = ""  # how the draw was made (temperature, replacement)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: what each source gives the training draw."""
        total = max(len(self.train), 1)
        parts = []
        for source, n, fraction in zip(self.sources, self.drawn, self.fractions, strict=True):
            tokens = sum(item_tokens(item) for item in source.train)
            parts.append(
                f"{source.name} {n} drawn of {len(source.train)} ({n / total:.1%}; share {fraction:.3f}; "
                f"{tokens} tokens in the source)"
            )
        return f"{len(self.train)} items drawn {self.description}: " + ", ".join(parts)

    def stats(self) -> dict[str, Any]:
        """Stats for the data summary: the sums over sources under "train" and "eval", each source's under
        "train <name>" and "eval <name>", and the draw under "mixture"."""
        out: dict[str, Any] = {}
        for split in ("train", "eval"):
            parts = [s.stats[split] for s in self.sources if split in s.stats]
            if parts:
                out[split] = _summed(parts)
        for source in self.sources:
            for split, stat in source.stats.items():
                out[f"{split} {source.name}"] = stat
        out["mixture"] = _Line(self.summary())
        return out


@dataclass
class _Line:
    text: str

    def summary(self) -> str:
        return self.text


def _summed(parts: list[Any]) -> Any:
    """The field-by-field sum of count dataclasses (or of plain numbers)."""
    if not dataclasses.is_dataclass(parts[0]):
        return sum(parts)
    kind = type(parts[0])
    return kind(**{f.name: sum(getattr(p, f.name) for p in parts) for f in dataclasses.fields(kind)})


def item_tokens(item: Any) -> int:
    """Tokens of one item: its ``input_ids``, or its prompt and responses (a pair), or its prompt (RL)."""
    if isinstance(item, list):  # a packed row
        return sum(item_tokens(x) for x in item)
    names = ("input_ids", "prompt_ids", "chosen_ids", "rejected_ids")
    return sum(len(getattr(item, name)) for name in names if isinstance(getattr(item, name, None), list))


def load_mixture(config: SourceConfig, seed: int, synthetic: Generator, tokenize: Tokenize) -> Mixture:
    """Read, tokenize and draw ``config.sources`` (see the module docstring)."""
    loaded = [_load_source(k, config, seed, synthetic, tokenize) for k in range(len(config.sources))]
    sizes = [len(source.train) for source in loaded]
    masses = [s.weight if s.weight is not None else float(n) for s, n in zip(config.sources, sizes, strict=True)]
    fractions = shares(masses, config.mixture.temperature)
    size = config.mixture.size if config.mixture.size is not None else sum(sizes)
    train = EpochDraws([source.train for source in loaded], fractions, size, config.mixture.replacement, seed)
    how = "with" if config.mixture.replacement else "without"
    description = f"afresh each epoch (temperature {config.mixture.temperature:g}, {how} replacement); epoch 0"
    held_out = HeldOut({source.name: source.held_out for source in loaded if source.held_out})
    return Mixture(loaded, train, held_out, train.drawn(0), fractions, description)


def _load_source(k: int, config: SourceConfig, seed: int, synthetic: Generator, tokenize: Tokenize) -> SourceData:
    """Source ``k`` of ``config.sources``: the data section as the source sets it, read and tokenized; every error
    names the source."""
    source = config.sources[k]
    name = source.label()
    where = f"data.sources[{k}] ({name})"
    try:
        section = dataclasses.replace(
            config,
            sources=[],
            path=source.path,
            split=source.split,
            max_examples=source.max_examples,
            eval_path=source.eval_path,
            eval_split=source.eval_split,
            **source.format_keys(),
        )
    except InvalidValue as err:
        raise ConfigError(f"{where}: {err.key} {err.message}") from None
    try:
        train_rows, eval_rows = train_eval_rows(section, seed, synthetic)
        train, train_stats = tokenize(train_rows, section)
        stats = {"train": train_stats}
        held_out: list[Any] = []
        if eval_rows is not None and len(eval_rows):
            held_out, stats["eval"] = tokenize(eval_rows, section)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    return SourceData(name, train, held_out, stats)


def source_losses(
    held_out: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, Any]],
    step_fn: Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]],
    batch_size: int,
) -> Callable[[torch.nn.Module], dict[str, float]] | None:
    """An ``evaluate(model)`` hook giving ``{"<source>/loss": ..., "<source>/<metric>": ...}`` (logged by the runner
    as ``eval/<source>/...``) over each source's held-out items, weighted as the runner weights eval/loss (by each
    batch's ``num_items``); None when the items are not a mixture's.

    The runner calls ``evaluate`` in every process with the unwrapped model; each computes every source whole, so
    the numbers agree across processes without a collective.
    """
    by_source = getattr(held_out, "by_source", None)
    if not by_source:
        return None

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        results: dict[str, float] = {}
        for name, items in by_source.items():
            total, units, sums = 0.0, 0.0, {}
            for start in range(0, len(items), batch_size):
                batch = collate(list(items[start : start + batch_size]))
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                loss_sum, metrics = step_fn(model, batch)
                weight = float(batch["num_items"])
                total += float(loss_sum)
                units += weight
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * weight
            results[f"{name}/loss"] = total / max(units, 1.0)
            results.update({f"{name}/{key}": value / max(units, 1.0) for key, value in sorted(sums.items())})
        return results

    return evaluate


def by_source_metrics(
    evaluate: Callable[[torch.nn.Module, Sequence[Any]], dict[str, float]], held_out: Sequence[Any]
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """``evaluate(model, items)`` over all of ``held_out``, plus, for a mixture's, over each source's items with
    the keys prefixed by the source's name (``accuracy`` -> ``<source>/accuracy``)."""

    def run(model: torch.nn.Module) -> dict[str, float]:
        results = dict(evaluate(model, held_out))
        for name, items in getattr(held_out, "by_source", {}).items():
            results.update({f"{name}/{key}": value for key, value in evaluate(model, items).items()})
        return results

    return run
