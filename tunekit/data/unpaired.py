"""Unpaired binary feedback for KTO: completions marked desirable (``label`` true) or undesirable (false).

A row is one of:

- ``prompt`` + ``completion`` + ``label``: the prompt a string (put into ``prompt_template``) or chat messages, the
  completion a string or one assistant message;
- ``messages`` + ``label``: a whole conversation, the completion being its last (assistant) message;
- a preference pair, ``chosen`` + ``rejected`` (with or without a ``prompt``, as :mod:`tunekit.data.pairs` reads
  them) and no ``label``: it becomes two examples, chosen -> true and rejected -> false.

The label must be a JSON boolean: a missing or null label, or a 1, "yes" or "true", is an error naming the row, since
guessing at what a number or string means would train on half-understood feedback.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any

import torch

from tunekit.data.collate import collate_pairs
from tunekit.data.formats import assistant_text, chat_messages, render_chat, required_column
from tunekit.data.mixing import load_mixture
from tunekit.data.pairs import PairDataConfig, keep_last, split_pair
from tunekit.data.sft import TRUNCATION_WARNING_SHARE
from tunekit.data.sources import Rows, SourceConfig, empty_row, require_prompt_template, train_eval_rows
from tunekit.data.synthetic import Generator
from tunekit.errors import DataError, require


@dataclass
class UnpairedDataConfig(SourceConfig):
    eval_fraction: float = 0.1
    # The prompt, a string or a list of chat messages.
    prompt_column: str = "prompt"
    # The completion being judged, a string or one assistant message.
    completion_column: str = "completion"
    # true: a desirable completion; false: an undesirable one. Must be a JSON boolean.
    label_column: str = "label"
    # A whole conversation whose last message is the judged assistant turn (instead of prompt + completion).
    messages_column: str = "messages"
    # Rows with this column and rejected_column, and no label, are preference pairs, read as two examples: chosen ->
    # true, rejected -> false.
    chosen_column: str = "chosen"
    # The dispreferred response of such a pair, read as an undesirable example.
    rejected_column: str = "rejected"
    # Where an implicit prompt ends, for pairs without a prompt column (see the dpo recipe's data section).
    prompt_delimiter: str = "\n\nAssistant:"
    # How a string prompt is written before its completion; {prompt} is replaced by the prompt.
    prompt_template: str = "{prompt}"
    # Prompt + completion tokens; completions are cut at the end to fit.
    max_length: int = 512
    # Prompts longer than this keep their last tokens, after a leading BOS; null: no limit.
    max_prompt_length: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_length >= 1, "max_length", f"must be at least 1, got {self.max_length}")
        require(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            "max_prompt_length",
            f"must be at least 1 (or null for no limit), got {self.max_prompt_length}",
        )
        require_prompt_template(self.prompt_template)

    def pair_config(self) -> PairDataConfig:
        """The same settings as a pair data section, for reading pair rows with :func:`split_pair`."""
        shared = {f.name for f in fields(PairDataConfig)} & {f.name for f in fields(self)}
        return PairDataConfig(**{name: getattr(self, name) for name in shared})


@dataclass
class UnpairedExample:
    """One tokenized example. ``prompt_ids`` start with BOS where the tokenizer has one; the completion ends with EOS
    (or the chat template's end of turn)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool  # true: desirable
    index: int  # the row's line or row number in its source, as error messages give it


@dataclass
class UnpairedStats:
    rows: int = 0
    desirable: int = 0
    undesirable: int = 0
    from_pairs: int = 0  # rows read as a preference pair (two examples each)
    empty_dropped: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0

    def summary(self) -> str:
        pairs = f" ({self.from_pairs} of them pairs)" if self.from_pairs else ""
        text = (
            f"{self.rows} rows{pairs} -> {self.desirable + self.undesirable} examples, {self.desirable} desirable "
            f"and {self.undesirable} undesirable; {self.empty_dropped} empty completions dropped, "
            f"{self.prompt_truncated} prompts and {self.completion_truncated} completions truncated"
        )
        examples = self.desirable + self.undesirable
        if examples and self.completion_truncated > TRUNCATION_WARNING_SHARE * examples:
            share = self.completion_truncated / examples
            text += f". Warning: {share:.0%} of the completions were cut at data.max_length; raise it"
        return text


def row_texts(
    row: dict[str, Any], config: UnpairedDataConfig, tokenizer: Any, where: str
) -> tuple[str, list[tuple[str, bool, str]], bool]:
    """``(prompt_text, [(completion_text, label, column), ...], add_bos)`` of one row: one completion, or two for a
    preference pair (chosen, then rejected)."""
    label_given = config.label_column in row
    if not label_given and config.chosen_column in row and config.rejected_column in row:
        prompt, chosen, rejected, add_bos = split_pair(row, config.pair_config(), tokenizer, where)
        return prompt, [(chosen, True, config.chosen_column), (rejected, False, config.rejected_column)], add_bos
    label = row.get(config.label_column)
    if label is None:
        what = "missing column" if not label_given else "a null in column"
        raise DataError(
            f"{where}: {what} {config.label_column!r}: each row needs a label, true for a desirable completion and "
            f"false for an undesirable one (or {config.chosen_column!r} and {config.rejected_column!r} columns, a pair)"
        )
    if not isinstance(label, bool):
        raise DataError(f"{where}: column {config.label_column!r} must be true or false, got {label!r}")
    eos = tokenizer.eos_token or ""
    if config.messages_column in row and config.completion_column not in row:
        messages = chat_messages(row[config.messages_column], where, config.messages_column)
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: column {config.messages_column!r} must end with the assistant message being judged, after "
                "at least one message before it"
            )
        prompt = render_chat(messages[:-1], tokenizer, add_generation_prompt=True)
        full = render_chat(messages, tokenizer, add_generation_prompt=False)
        if not full.startswith(prompt):
            raise DataError(f"{where}: the chat template renders the conversation differently from its beginning")
        return prompt, [(full[len(prompt) :], label, config.messages_column)], False
    prompt_value = required_column(row, config.prompt_column, where)
    completion = assistant_text(required_column(row, config.completion_column, where), where, config.completion_column)
    if isinstance(prompt_value, list):
        messages = chat_messages(prompt_value, where, config.prompt_column)
        return render_chat(messages, tokenizer, True), [(completion + eos, label, config.completion_column)], False
    if not isinstance(prompt_value, str):
        raise DataError(f"{where}: column {config.prompt_column!r} must be a string or a list of messages")
    prompt = config.prompt_template.replace("{prompt}", prompt_value)
    return prompt, [(completion + eos, label, config.completion_column)], True


def tokenize_unpaired(
    rows: Rows, config: UnpairedDataConfig, tokenizer: Any
) -> tuple[list[UnpairedExample], UnpairedStats]:
    """Tokenize every row (a pair row gives two examples); errors name the row."""
    if len(rows) == 0:
        raise DataError(f"{rows.source} holds no rows")
    stats = UnpairedStats(rows=len(rows))
    examples = []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token or ""
    for i, row in enumerate(rows.rows):
        where = rows.where(i)
        prompt, completions, add_bos = row_texts(row, config, tokenizer, where)
        stats.from_pairs += len(completions) == 2
        blank = [column for text, _, column in completions if not text.removesuffix(eos).strip()]
        if blank:
            empty_row(rows, i, f"the completion in column {blank[0]!r}", config.empty_rows)
            stats.empty_dropped += 1
            continue
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if add_bos and bos is not None:
            prompt_ids = [bos] + prompt_ids
        if config.max_prompt_length is not None and len(prompt_ids) > config.max_prompt_length:
            stats.prompt_truncated += 1
            prompt_ids = keep_last(prompt_ids, config.max_prompt_length, bos)
        room = config.max_length - len(prompt_ids)
        if room < 1:
            raise DataError(
                f"{where}: the prompt has {len(prompt_ids)} tokens and leaves no room for the completion within "
                f"data.max_length={config.max_length}; raise data.max_length or set data.max_prompt_length"
            )
        for text, label, _ in completions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            stats.completion_truncated += len(ids) > room
            examples.append(UnpairedExample(prompt_ids, ids[:room], label, rows.positions[i]))  # type: ignore[index]
            stats.desirable += label
            stats.undesirable += not label
    if not examples:
        raise DataError(f"every row of {rows.source} was dropped: each has an empty completion")
    return examples, stats


def load_unpaired_data(
    config: UnpairedDataConfig, tokenizer: Any, seed: int, synthetic: Generator
) -> tuple[list[UnpairedExample], list[UnpairedExample], dict[str, UnpairedStats]]:
    """Train and held-out examples for ``config``; ``synthetic(n, seed, split)`` makes rows when path is "synthetic".

    The held-out examples are put in a fixed random order (drawn with ``seed``): evaluation batches them in order,
    and a pair's two examples side by side would hand KTO's reference point a matched (prompt, completion) pair.
    (Training batches are reshuffled every epoch by the runner.)
    """
    if config.sources:  # a mixture (tunekit/data/mixing.py); its held-out examples are put in a random order too
        mixture = load_mixture(config, seed, synthetic, lambda rows, part: tokenize_unpaired(rows, part, tokenizer))
        random.Random(seed).shuffle(mixture.held_out)
        return mixture.train, mixture.held_out, mixture.stats()
    train_rows, eval_rows = train_eval_rows(config, seed, synthetic)
    train, train_stats = tokenize_unpaired(train_rows, config, tokenizer)
    stats = {"train": train_stats}
    evals: list[UnpairedExample] = []
    if eval_rows is not None and len(eval_rows):
        evals, stats["eval"] = tokenize_unpaired(eval_rows, config, tokenizer)
        random.Random(seed).shuffle(evals)
    return train, evals, stats


@dataclass
class _Rows:
    """Two sequences with one prompt, in the shape :func:`collate_pairs` takes."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int
    margin: float = 0.0


def collate_unpaired(
    examples: list[UnpairedExample], pad_id: int, pad_to_multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """B examples -> one batch of 2B sequences: rows [0, B) are prompt_i + completion_i, rows [B, 2B) the mismatched
    prompt_i + completion_{i-1} (cyclically) that estimate KTO's reference point, as TRL's KTOTrainer pairs them.

    ``labels`` [2B, T] hold the completion tokens; ``label`` [B] bool, true for a desirable completion;
    ``num_items`` = B examples. A batch of one pairs its prompt with its own completion: its reference point is then
    its own log ratio (KTO needs at least two examples a batch; the recipe requires it for training).
    """
    shifted = examples[-1:] + examples[:-1]
    rows = [
        _Rows(e.prompt_ids, e.completion_ids, s.completion_ids, e.index) for e, s in zip(examples, shifted, strict=True)
    ]
    batch = collate_pairs(rows, pad_id, pad_to_multiple_of)
    del batch["margin"]
    batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.bool)
    return batch
