"""Supervised data: rows -> token ids with labels masked to the trainable segments, with truncation stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tunekit.data.formats import Format, detect_format, empty_part, row_segments
from tunekit.data.mixing import load_mixture
from tunekit.data.sources import Rows, SourceConfig, empty_row, require_prompt_template, train_eval_rows
from tunekit.data.synthetic import Generator
from tunekit.errors import DataError, require
from tunekit.losses.sft import IGNORE_INDEX


@dataclass
class DataConfig(SourceConfig):
    # Row format (docs/data.md): text, prompt_completion or messages; auto decides from the first row's columns, trying
    # messages, then prompt + completion, then text.
    format: Literal["auto", "text", "prompt_completion", "messages"] = "auto"
    # text rows: the column with the whole text (the loss is taken on all of it).
    text_column: str = "text"
    # prompt_completion rows: the prompt column, a string or a list of chat messages.
    prompt_column: str = "prompt"
    # prompt_completion rows: the completion, a string or one assistant message; the loss is taken on it and its EOS.
    completion_column: str = "completion"
    # messages rows: a list of {role, content} messages rendered with the chat template; the loss is taken on the
    # assistant turns.
    messages_column: str = "messages"
    # messages rows: the column with the tools a row's chat shows the template (a list of JSON schemas); the assistant's
    # tool calls are trained on, the tool turns are not (docs/tools.md).
    tools_column: str = "tools"
    # Tools (built-in names, file.py:function or pkg.module:function) whose schemas every chat row without a tools
    # column of its own shows the chat template.
    tools: list[str] = field(default_factory=list)
    # How a string prompt is written before its completion; {prompt} is replaced by the prompt column.
    prompt_template: str = "{prompt}"
    # Longer examples are cut at the end; examples left with no trainable token are dropped and counted.
    max_length: int = 512
    # Take the loss on prompt / user tokens too, not only on completions and assistant turns.
    train_on_prompt: bool = False
    # Pack several examples into one row of max_length tokens; they never attend across their borders.
    packing: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_length >= 1, "max_length", f"must be at least 1, got {self.max_length}")
        require_prompt_template(self.prompt_template)


@dataclass
class Example:
    """One tokenized example. ``labels[i]`` is the target for position i (IGNORE_INDEX where no loss is taken);
    the model predicts token i from tokens before it, so labels are shifted inside the loss, not here."""

    input_ids: list[int]
    labels: list[int]
    index: int  # the row's line or row number in its source, as error messages and spike reports give it


# A data summary warns when more rows than this share were cut at data.max_length.
TRUNCATION_WARNING_SHARE = 0.05


@dataclass
class TokenizeStats:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0  # no trainable token left within max_length
    empty: int = 0  # dropped by data.empty_rows: nothing to learn from
    tokens: int = 0
    trainable_tokens: int = 0

    def summary(self) -> str:
        text = (
            f"{self.rows} rows -> {self.rows - self.dropped - self.empty} examples, {self.tokens} tokens "
            f"({self.trainable_tokens} trained on); {self.truncated} truncated, {self.dropped} dropped "
            f"with no trainable token left, {self.empty} dropped as empty"
        )
        if self.rows and self.truncated > TRUNCATION_WARNING_SHARE * self.rows:
            text += (
                f". Warning: {self.truncated / self.rows:.0%} of the rows were cut at data.max_length and lost their "
                "ends (often the answer they teach); raise data.max_length"
            )
        return text


def columns_of(config: DataConfig) -> dict[str, str]:
    return {
        "text": config.text_column,
        "prompt": config.prompt_column,
        "completion": config.completion_column,
        "messages": config.messages_column,
        "tools": config.tools_column,
    }


def tokenize_rows(rows: Rows, config: DataConfig, tokenizer: Any) -> tuple[list[Example], TokenizeStats]:
    """Tokenize every row; raise :class:`DataError` naming the row at fault, or if nothing usable is left."""
    if len(rows) == 0:
        raise DataError(f"{rows.source} holds no rows")
    columns = columns_of(config)
    fmt: Format = detect_format(rows.rows[0], columns, rows.where(0)) if config.format == "auto" else config.format
    tools = tool_schemas(config.tools)
    stats = TokenizeStats(rows=len(rows))
    examples = []
    for i, row in enumerate(rows.rows):
        where = rows.where(i)
        segments, add_bos = row_segments(row, fmt, columns, tokenizer, where, config.prompt_template, tools)
        empty = empty_part(row, fmt, columns)
        if empty is not None:
            empty_row(rows, i, empty, config.empty_rows)
            stats.empty += 1
            continue
        input_ids, labels = tokenize_segments(segments, tokenizer, add_bos, config.train_on_prompt)
        if len(input_ids) > config.max_length:
            stats.truncated += 1
            input_ids, labels = input_ids[: config.max_length], labels[: config.max_length]
        # Position 0 is never predicted (nothing comes before it), in packed rows as in single ones. An empty row
        # (no BOS, no text) has no position at all, and is dropped below with no trainable token.
        if labels:
            labels[0] = IGNORE_INDEX
        n_trainable = sum(label != IGNORE_INDEX for label in labels)
        if n_trainable == 0:
            stats.dropped += 1
            continue
        stats.tokens += len(input_ids)
        stats.trainable_tokens += n_trainable
        examples.append(Example(input_ids, labels, rows.positions[i]))
    if not examples and stats.empty == stats.rows:
        raise DataError(f"every row of {rows.source} is empty: nothing to learn from ({stats.rows} rows)")
    if not examples:
        raise DataError(
            f"every example of {rows.source} was truncated away: none keeps a trainable token within "
            f"data.max_length={config.max_length} ({stats.rows} rows); raise data.max_length or shorten prompts"
        )
    return examples, stats


def tool_schemas(names: list[str]) -> list[dict[str, Any]] | None:
    """The JSON schemas of the tools ``names`` (data.tools), or None for none."""
    if not names:
        return None
    from tunekit.tools.registry import schemas_for

    return schemas_for(names)


def tokenize_segments(
    segments: list[tuple[str, bool]], tokenizer: Any, add_bos: bool, train_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Concatenate the tokens of each segment; labels copy the trainable ones and mask the rest."""
    input_ids: list[int] = []
    labels: list[int] = []
    bos = tokenizer.bos_token_id
    if add_bos and bos is not None:
        input_ids.append(bos)
        labels.append(IGNORE_INDEX)
    for text, trainable in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if trainable or train_on_prompt else [IGNORE_INDEX] * len(ids))
    return input_ids, labels


def load_sft_data(
    config: DataConfig,
    tokenizer: Any,
    seed: int,
    synthetic: Generator,
) -> tuple[list[Example], list[Example], dict[str, TokenizeStats]]:
    """Train and eval examples for ``config``; ``synthetic(n, seed)`` makes rows when path is "synthetic"."""
    if config.sources:
        mixture = load_mixture(config, seed, synthetic, lambda rows, section: tokenize_rows(rows, section, tokenizer))
        return mixture.train, mixture.held_out, mixture.stats()
    train_rows, eval_rows = train_eval_rows(config, seed, synthetic)
    train, train_stats = tokenize_rows(train_rows, config, tokenizer)
    stats = {"train": train_stats}
    evals: list[Example] = []
    if eval_rows is not None and len(eval_rows):
        evals, stats["eval"] = tokenize_rows(eval_rows, config, tokenizer)
    return train, evals, stats
