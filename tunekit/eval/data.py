"""The rows an evaluation reads, turned into generation prompts or into training-style examples for perplexity.

One ``data`` section serves every task of a run: exact match and win rate generate from the prompt column and
compare with a reference column; perplexity tokenizes whole rows exactly as ``tunekit.data.sft`` does for
training (same segments, same label masking), so an evaluation loss is the training loss on new rows.

Every format SFT trains on is accepted. Chat rows (a messages column) are split for generation at their last
assistant turn: the conversation before it, rendered with the chat template and its generation prompt, is the
prompt, and that turn is the reference (:func:`generation_rows`). Perplexity scores every assistant turn, as SFT
trains on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tunekit.data import synthetic
from tunekit.data.formats import chat_messages, required_column
from tunekit.data.prompts import PromptExample, encode_prompt
from tunekit.data.sft import DataConfig
from tunekit.data.sources import Rows, read_rows, require_prompt_template
from tunekit.errors import DataError, require

# Synthetic evaluation rows are drawn with this offset on the seed: the same rows the SFT recipe holds out for
# the same seed, so an SFT run's held-out loss and this evaluation's perplexity are measured on one set.
SYNTHETIC_SEED_OFFSET = 10_000


@dataclass
class EvalDataConfig:
    # A .jsonl/.json/.parquet/.csv file, a dataset directory, a hub id, or "synthetic" (tunekit's generated
    # arithmetic, prompt/completion rows ending in "#### N").
    path: str = "synthetic"
    # Split of a dataset directory or hub dataset to read; a single file is one split, train.
    split: str = "train"
    # Rows generated when path is "synthetic": the first of the rows an SFT run with the same seed holds out.
    synthetic_size: int = 64
    # Evaluate only the first this many rows (null: all), generated ones included.
    max_examples: int | None = None
    # Perplexity reads rows in one of the training formats (see docs/data.md); auto detects it from the columns.
    format: Literal["auto", "text", "prompt_completion", "messages"] = "auto"
    # Perplexity on text rows: the column with the whole text.
    text_column: str = "text"
    # The prompt generation starts from (exact_match, win_rate) and perplexity's prompt: a string or a list of chat
    # messages.
    prompt_column: str = "prompt"
    # The reference completion: the target of perplexity and the opponent of win_rate.opponent=reference.
    completion_column: str = "completion"
    # Chat rows: a list of {role, content} messages. Perplexity scores the assistant turns; generation continues the
    # conversation before the last assistant turn, and that turn is the reference (prompt and completion columns).
    messages_column: str = "messages"
    # Exact match reads the reference answer here (null: completion_column); "... #### 18" or a bare number.
    answer_column: str | None = None
    # How a string prompt is written before its completion; {prompt} is replaced by the prompt column.
    prompt_template: str = "{prompt}"
    # Perplexity: longer examples are cut at the end, as in training.
    max_length: int = 512
    # Generation: a prompt longer than this many tokens is an error naming its row.
    max_prompt_length: int = 512

    def __post_init__(self) -> None:
        require(bool(self.path.strip()), "path", 'is empty; give a data file, dataset directory, hub id or "synthetic"')
        require(self.synthetic_size >= 1, "synthetic_size", f"must be at least 1, got {self.synthetic_size}")
        require(
            self.max_examples is None or self.max_examples >= 1,
            "max_examples",
            f"must be at least 1 (or null for all), got {self.max_examples}",
        )
        require(self.max_length >= 1, "max_length", f"must be at least 1, got {self.max_length}")
        require(self.max_prompt_length >= 1, "max_prompt_length", f"must be at least 1, got {self.max_prompt_length}")
        require_prompt_template(self.prompt_template)

    @property
    def reference_answer_column(self) -> str:
        return self.answer_column or self.completion_column


def load_eval_rows(config: EvalDataConfig, seed: int) -> Rows:
    """The rows to evaluate on: all of data.path (up to data.max_examples), or generated ones."""
    if config.path == "synthetic":
        rows = Rows(
            "synthetic", synthetic.sft_examples(config.synthetic_size, seed + SYNTHETIC_SEED_OFFSET, "held_out")
        )
    else:
        rows = read_rows(config.path, config.split)
    return first_rows(rows, config.max_examples)


def first_rows(rows: Rows, limit: int | None) -> Rows:
    """The first ``limit`` of ``rows`` (all with None); a DataError when none are left to evaluate."""
    if limit is not None:
        rows = rows.subset(list(range(min(limit, len(rows)))))
    if len(rows) == 0:
        raise DataError(f"{rows.source} holds no rows")
    return rows


def generation_rows(rows: Rows, config: EvalDataConfig) -> Rows:
    """``rows`` as prompt/completion rows for generation: chat rows split at their last assistant turn (the
    turns before it are the prompt, as a list of messages; its content is the completion), other rows as given.

    The split rows keep their other columns (an answer column, say) and their positions for error messages.
    """
    column = config.messages_column
    # As format detection decides for training: a messages column makes chat rows.
    chat = column in rows.rows[0] if config.format == "auto" else config.format == "messages"
    if not chat:
        return rows
    split = []
    for i, row in enumerate(rows.rows):
        where = rows.where(i)
        messages = chat_messages(required_column(row, column, where), where, column)
        last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise DataError(f"{where}: the conversation has no assistant message to serve as the reference")
        if last == 0:
            raise DataError(f"{where}: the conversation opens with its only assistant message; there is no prompt")
        rest = {k: v for k, v in row.items() if k != column}
        split.append(
            {**rest, config.prompt_column: messages[:last], config.completion_column: messages[last]["content"]}
        )
    return Rows(rows.source, split, rows.positions, rows.unit)


def sft_data_config(config: EvalDataConfig) -> DataConfig:
    """The training data config that tokenizes these rows the way SFT does (loss on completions only)."""
    return DataConfig(
        path=config.path,
        format=config.format,
        text_column=config.text_column,
        prompt_column=config.prompt_column,
        completion_column=config.completion_column,
        messages_column=config.messages_column,
        prompt_template=config.prompt_template,
        max_length=config.max_length,
    )


def require_column(rows: Rows, column: str, key: str) -> list[Any]:
    """Every row's value of ``column``, or a DataError naming the first row without it and the config key."""
    values = []
    for i, row in enumerate(rows.rows):
        if column not in row:
            raise DataError(f"{rows.where(i)}: missing column {column!r} ({key}; the row has {sorted(row)})")
        if row[column] is None:
            raise DataError(f"{rows.where(i)}: column {column!r} is empty (null); it is read as {key}")
        values.append(row[column])
    return values


def reference_answers(rows: Rows, config: EvalDataConfig) -> list[Any]:
    """Every row's reference answer for exact match (data.answer_column, else data.completion_column)."""
    key = "data.answer_column" if config.answer_column else "data.completion_column, or set data.answer_column"
    return require_column(rows, config.reference_answer_column, key)


def build_prompts(rows: Rows, config: EvalDataConfig, tokenizer: Any) -> list[PromptExample]:
    """One generation prompt per row, tokenized as in training: BOS, then ``prompt_template`` filled with a string
    prompt, or chat messages rendered with the chat template and its generation prompt.

    Each prompt carries the row's other columns for reward functions, plus ``answer`` (the data.answer_column
    value) when the row has no column of that name, so ``math_correct`` can pick the best of n on any data.
    """
    require_column(rows, config.prompt_column, "data.prompt_column")
    # Every prompt carries the same column names (None where a row lacks one): rollouts batch them by name.
    names = sorted({k for row in rows.rows for k in row if k != config.prompt_column} | {"answer"})
    prompts = []
    for i, row in enumerate(rows.rows):
        text, ids = encode_prompt(
            row[config.prompt_column],
            tokenizer,
            config.prompt_template,
            config.max_prompt_length,
            rows.where(i),
            config.prompt_column,
        )
        columns = {k: row.get(k) for k in names}
        if "answer" not in row:
            columns["answer"] = row.get(config.reference_answer_column)
        prompts.append(PromptExample(text, ids, columns, rows.positions[i]))
    return prompts
