"""Prompt-only data for reinforcement learning: rows with a prompt and whatever columns rewards need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tunekit.data import synthetic
from tunekit.data.formats import chat_messages, render_chat, required_column
from tunekit.data.mixing import HeldOut, load_mixture
from tunekit.data.sources import Rows, SourceConfig, empty_row, require_prompt_template, train_eval_rows
from tunekit.errors import DataError, require


@dataclass
class PromptExample:
    prompt: str
    prompt_ids: list[int]
    columns: dict[str, Any]  # the row's other columns (e.g. the reference answer), passed to reward functions
    index: int  # the row's line or row number in its source, as error messages give it
    where: str = ""  # the same in words, e.g. "prompts.jsonl line 12"


@dataclass
class PromptDataConfig(SourceConfig):
    eval_fraction: float = 0.1
    synthetic_size: int = 400
    # The prompt, a string or a list of chat messages (rendered with the chat template). The row's other columns, e.g.
    # answer, are passed to the reward functions.
    prompt_column: str = "prompt"
    # How the prompt column is written; {prompt} is replaced by it.
    prompt_template: str = "{prompt}"
    # Prompt tokens; a longer prompt is an error naming its row (there would be no room to answer).
    max_prompt_length: int = 256
    # Held-out prompts scored at each evaluation (null: all).
    max_eval_examples: int | None = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_prompt_length >= 1, "max_prompt_length", f"must be at least 1, got {self.max_prompt_length}")
        require(
            self.max_eval_examples is None or self.max_eval_examples >= 0,
            "max_eval_examples",
            f"must be 0 or more (or null for all), got {self.max_eval_examples}",
        )
        require_prompt_template(self.prompt_template)


@dataclass
class PromptSet:
    """What :func:`load_prompts` read: training and held-out prompts, and how many empty ones it dropped."""

    train: list[PromptExample]
    held_out: list[PromptExample]
    empty_dropped: int = 0
    # With data.sources: what each source gave and how the training prompts were drawn, one line each.
    lines: list[str] = field(default_factory=list)


def load_prompts(
    config: PromptDataConfig, tokenizer: Any, seed: int, tools: list[dict[str, Any]] | None = None
) -> PromptSet:
    """Train and held-out prompts; a prompt longer than data.max_prompt_length is an error naming its row, and an
    empty one is dropped or refused per data.empty_rows. ``tools`` (JSON schemas) reach the chat template."""
    if config.sources:
        return _mixed_prompts(config, tokenizer, seed, tools)
    train_rows, eval_rows = train_eval_rows(config, seed, synthetic.prompts_with_answers)
    if eval_rows is not None and config.max_eval_examples is not None:
        eval_rows = eval_rows.subset(list(range(min(config.max_eval_examples, len(eval_rows)))))
    train, train_empty = _prompts(train_rows, config, tokenizer, tools)
    held_out, held_out_empty = _prompts(eval_rows, config, tokenizer, tools) if eval_rows else ([], 0)
    return PromptSet(train, held_out, train_empty + held_out_empty)


def _mixed_prompts(
    config: PromptDataConfig, tokenizer: Any, seed: int, tools: list[dict[str, Any]] | None
) -> PromptSet:
    """:func:`load_prompts` over data.sources; data.max_eval_examples is shared evenly between the sources."""
    mixture = load_mixture(
        config, seed, synthetic.prompts_with_answers, lambda rows, section: _prompts(rows, section, tokenizer, tools)
    )
    held_out = mixture.held_out
    if config.max_eval_examples is not None:
        each = -(-config.max_eval_examples // len(mixture.sources))
        held_out = HeldOut({name: items[:each] for name, items in held_out.by_source.items()})
    lines = [
        f"data ({source.name}): {len(source.train)} prompts, {len(held_out.by_source.get(source.name, []))} held "
        f"out, {sum(source.stats.values())} dropped as empty"
        for source in mixture.sources
    ]
    lines.append(f"data (mixture): {mixture.summary()}")
    empty = sum(sum(source.stats.values()) for source in mixture.sources)
    return PromptSet(mixture.train, held_out, empty, lines)


def _prompts(
    rows: Rows, config: PromptDataConfig, tokenizer: Any, tools: list[dict[str, Any]] | None = None
) -> tuple[list[PromptExample], int]:
    """The prompts of ``rows`` and the number of empty ones dropped."""
    if len(rows) == 0:
        raise DataError(f"{rows.source} holds no rows")
    out = []
    empty = 0
    for i, row in enumerate(rows.rows):
        where = rows.where(i)
        prompt = required_column(row, config.prompt_column, where)
        text, ids = encode_prompt(
            prompt, tokenizer, config.prompt_template, config.max_prompt_length, where, config.prompt_column, tools
        )
        if _blank_prompt(prompt):
            empty_row(rows, i, f"the prompt (column {config.prompt_column!r})", config.empty_rows)
            empty += 1
            continue
        columns = {k: v for k, v in row.items() if k != config.prompt_column}
        out.append(PromptExample(text, ids, columns, rows.positions[i], where))
    if not out:
        raise DataError(f"every prompt of {rows.source} is empty ({len(rows)} rows)")
    return out, empty


def _blank_prompt(prompt: str | list[dict[str, str]]) -> bool:
    """A string prompt with no text, or chat messages none of which has any (checked by encode_prompt already)."""
    if isinstance(prompt, str):
        return not prompt.strip()
    return all(not message["content"].strip() for message in prompt)


def encode_prompt(
    value: Any,
    tokenizer: Any,
    template: str,
    max_length: int,
    where: str,
    column: str = "prompt",
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[int]]:
    """A row's prompt as the text a model continues and its token ids.

    A string fills ``{prompt}`` in ``template`` and gets the tokenizer's BOS; a list of chat messages is rendered
    with the chat template and its generation prompt (the template places any BOS). More than ``max_length`` ids
    is an error naming the row, ``where``: the prompt would leave no room for a completion. ``tools`` (JSON
    schemas) are shown through the chat template, so they need chat prompts.
    """
    if tools and not isinstance(value, list):
        raise DataError(
            f"{where}: tools reach the model through the chat template, so a run with tools needs chat prompts (a "
            f"list of messages in column {column!r}), not a string"
        )
    if isinstance(value, list):
        text = render_chat(chat_messages(value, where, column), tokenizer, add_generation_prompt=True, tools=tools)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    elif isinstance(value, str):
        text = template.replace("{prompt}", value)
        bos = tokenizer.bos_token_id
        ids = ([bos] if bos is not None else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        raise DataError(f"{where}: column {column!r} must be a string or a list of messages")
    if len(ids) > max_length:
        raise DataError(
            f"{where}: the prompt has {len(ids)} tokens, more than data.max_prompt_length={max_length}, leaving "
            "no room for completions; raise it or shorten the prompt"
        )
    return text, ids


def collate_prompts(prompts: list[PromptExample]) -> dict[str, Any]:
    return {"prompts": prompts, "num_items": torch.tensor(len(prompts))}
