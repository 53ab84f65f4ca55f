"""Preference pairs: rows with a prompt and a chosen and a rejected response, tokenized for reward and DPO.

A row gives its prompt explicitly (``prompt`` + ``chosen`` + ``rejected``; the prompt a string or chat messages,
the responses strings or one assistant message) or implicitly: ``chosen`` and ``rejected`` are whole transcripts
that share a beginning, as in Anthropic's hh-rlhf, and the prompt is their shared text up to and including the
last ``data.prompt_delimiter`` ("\\n\\nAssistant:") inside it. Chat transcripts (lists of messages) with no prompt
split at the messages they share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tunekit.data.formats import assistant_text, chat_messages, render_chat, required_column
from tunekit.data.mixing import load_mixture
from tunekit.data.sft import TRUNCATION_WARNING_SHARE
from tunekit.data.sources import Rows, SourceConfig, empty_row, require_prompt_template, train_eval_rows
from tunekit.data.synthetic import Generator
from tunekit.errors import DataError, require


@dataclass
class PairDataConfig(SourceConfig):
    eval_fraction: float = 0.1
    # The prompt, a string or a list of chat messages. Rows without it have an implicit prompt: the shared beginning of
    # chosen and rejected, up to prompt_delimiter.
    prompt_column: str = "prompt"
    # The preferred response, a string or one assistant message; with an implicit prompt, the whole preferred
    # transcript.
    chosen_column: str = "chosen"
    # The dispreferred response, in the same form as chosen.
    rejected_column: str = "rejected"
    # Optional per-pair margin for the reward loss; rows without the column get 0.
    margin_column: str = "margin"
    # Where an implicit prompt ends, when rows have no prompt column.
    prompt_delimiter: str = "\n\nAssistant:"
    # How a string prompt is written before its response; {prompt} is replaced by the prompt.
    prompt_template: str = "{prompt}"
    # Prompt + response tokens; responses are cut at the end to fit.
    max_length: int = 512
    # Prompts longer than this keep their last tokens (the part next to the response), after a leading BOS; null: no
    # limit.
    max_prompt_length: int | None = None
    # Pairs whose chosen and rejected responses are identical carry no preference: drop (and count) or error.
    identical_pairs: Literal["drop", "error"] = "drop"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_length >= 1, "max_length", f"must be at least 1, got {self.max_length}")
        require(
            self.max_prompt_length is None or self.max_prompt_length >= 1,
            "max_prompt_length",
            f"must be at least 1 (or null for no limit), got {self.max_prompt_length}",
        )
        require_prompt_template(self.prompt_template)


@dataclass
class PairExample:
    """One tokenized pair. ``prompt_ids`` start with BOS where the tokenizer has one; responses end with EOS."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float
    index: int  # the row's line or row number in its source, as error messages and spike reports give it
    # (chosen, rejected) log-probs under the reference policy, when they were computed before training.
    ref_logps: tuple[float, float] | None = None


@dataclass
class PairStats:
    rows: int = 0
    identical_dropped: int = 0
    empty_dropped: int = 0  # by data.empty_rows: a chosen or rejected response with no text
    prompt_truncated: int = 0
    response_truncated: int = 0

    def summary(self) -> str:
        kept = self.rows - self.identical_dropped - self.empty_dropped
        text = (
            f"{self.rows} rows -> {kept} pairs; {self.identical_dropped} identical pairs and {self.empty_dropped} "
            f"with an empty response dropped, {self.prompt_truncated} prompts and {self.response_truncated} "
            "responses truncated"
        )
        if self.rows and self.response_truncated > TRUNCATION_WARNING_SHARE * self.rows:
            text += (
                f". Warning: {self.response_truncated / self.rows:.0%} of the pairs had their responses cut at "
                "data.max_length, where the difference between them may lie; raise data.max_length"
            )
        return text


def split_pair(row: dict[str, Any], config: PairDataConfig, tokenizer: Any, where: str) -> tuple[str, str, str, bool]:
    """``(prompt_text, chosen_text, rejected_text, add_bos)`` of one row, before tokenization."""
    chosen = required_column(row, config.chosen_column, where)
    rejected = required_column(row, config.rejected_column, where)
    prompt = row.get(config.prompt_column)
    if prompt is None:
        return _implicit_split(row, config, tokenizer, where)
    eos = tokenizer.eos_token or ""
    responses = (
        assistant_text(chosen, where, config.chosen_column) + eos,
        assistant_text(rejected, where, config.rejected_column) + eos,
    )
    if isinstance(prompt, list):
        messages = chat_messages(prompt, where, config.prompt_column)
        return render_chat(messages, tokenizer, add_generation_prompt=True), *responses, False
    if not isinstance(prompt, str):
        raise DataError(f"{where}: column {config.prompt_column!r} must be a string or a list of messages")
    return config.prompt_template.replace("{prompt}", prompt), *responses, True


def implicit_prompt(chosen: str, rejected: str, delimiter: str) -> str:
    """The shared beginning of two transcripts, up to and including the last ``delimiter`` inside it."""
    shared = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        shared += 1
    common = chosen[:shared]
    cut = common.rfind(delimiter)
    if cut >= 0:
        return common[: cut + len(delimiter)]
    return common


def _implicit_split(
    row: dict[str, Any], config: PairDataConfig, tokenizer: Any, where: str
) -> tuple[str, str, str, bool]:
    chosen, rejected = row[config.chosen_column], row[config.rejected_column]
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen_m = chat_messages(chosen, where, config.chosen_column)
        rejected_m = chat_messages(rejected, where, config.rejected_column)
        shared = 0
        while shared < min(len(chosen_m), len(rejected_m)) - 1 and chosen_m[shared] == rejected_m[shared]:
            shared += 1
        if shared == 0 or chosen_m[-1]["role"] != "assistant" or rejected_m[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: chat pairs without a prompt column must share their first messages and end "
                "with an assistant message"
            )
        prompt_text = render_chat(chosen_m[:shared], tokenizer, add_generation_prompt=True)
        full_c = render_chat(chosen_m, tokenizer, add_generation_prompt=False)
        full_r = render_chat(rejected_m, tokenizer, add_generation_prompt=False)
        if not (full_c.startswith(prompt_text) and full_r.startswith(prompt_text)):
            raise DataError(f"{where}: the chat template renders the shared prompt differently inside each transcript")
        return prompt_text, full_c[len(prompt_text) :], full_r[len(prompt_text) :], False
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise DataError(f"{where}: chosen and rejected must both be strings or both be lists of messages")
    prompt = implicit_prompt(chosen, rejected, config.prompt_delimiter)
    if not prompt:
        raise DataError(
            f"{where}: no prompt column and chosen/rejected share no beginning, so the prompt cannot be found; "
            "add a prompt column or set data.prompt_column"
        )
    eos = tokenizer.eos_token or ""
    return prompt, chosen[len(prompt) :] + eos, rejected[len(prompt) :] + eos, True


def tokenize_pairs(rows: Rows, config: PairDataConfig, tokenizer: Any) -> tuple[list[PairExample], PairStats]:
    """Tokenize every pair; errors name the row; identical pairs are dropped or refused per config."""
    if len(rows) == 0:
        raise DataError(f"{rows.source} holds no rows")
    stats = PairStats(rows=len(rows))
    pairs = []
    bos = tokenizer.bos_token_id
    for i, row in enumerate(rows.rows):
        where = rows.where(i)
        prompt, chosen, rejected, add_bos = split_pair(row, config, tokenizer, where)
        eos = tokenizer.eos_token or ""
        blank = [
            column
            for column, text in ((config.chosen_column, chosen), (config.rejected_column, rejected))
            if not text.removesuffix(eos).strip()
        ]
        if blank:
            empty_row(rows, i, f"the {' and '.join(repr(c) for c in blank)} response", config.empty_rows)
            stats.empty_dropped += 1
            continue
        if chosen == rejected:
            if config.identical_pairs == "error":
                raise DataError(f"{where}: chosen and rejected responses are identical")
            stats.identical_dropped += 1
            continue
        margin = _margin(row, config.margin_column, where)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if add_bos and bos is not None:
            prompt_ids = [bos] + prompt_ids
        if config.max_prompt_length is not None and len(prompt_ids) > config.max_prompt_length:
            stats.prompt_truncated += 1
            prompt_ids = keep_last(prompt_ids, config.max_prompt_length, bos)
        room = config.max_length - len(prompt_ids)
        if room < 1:
            raise DataError(
                f"{where}: the prompt has {len(prompt_ids)} tokens and leaves no room for the response within "
                f"data.max_length={config.max_length}; raise data.max_length or set data.max_prompt_length"
            )
        chosen_ids = tokenizer(chosen, add_special_tokens=False)["input_ids"]
        rejected_ids = tokenizer(rejected, add_special_tokens=False)["input_ids"]
        if len(chosen_ids) > room or len(rejected_ids) > room:
            if chosen_ids[:room] == rejected_ids[:room]:
                # Cut to fit, the two responses no longer differ: the pair would carry no preference.
                if config.identical_pairs == "error":
                    raise DataError(
                        f"{where}: chosen and rejected are identical in their first {room} tokens, all that fits "
                        f"after the prompt within data.max_length={config.max_length}; raise it or set "
                        "data.max_prompt_length"
                    )
                stats.identical_dropped += 1
                continue
            stats.response_truncated += 1
        pairs.append(PairExample(prompt_ids, chosen_ids[:room], rejected_ids[:room], margin, rows.positions[i]))
    if not pairs:
        raise DataError(
            f"every pair of {rows.source} was dropped: chosen and rejected are identical, or become so when cut to "
            f"data.max_length={config.max_length}, or one of them is empty"
        )
    return pairs, stats


def keep_last(ids: list[int], length: int, bos: int | None) -> list[int]:
    """The last ``length`` tokens of ``ids``, a leading BOS kept in front of them (it counts towards ``length``):
    the model was trained with BOS at position 0, added by tunekit or by the chat template."""
    if len(ids) <= length:
        return ids
    head = ids[:1] if bos is not None and ids[:1] == [bos] else []
    room = length - len(head)
    return head + (ids[-room:] if room > 0 else [])


def _margin(row: dict[str, Any], column: str, where: str) -> float:
    value = row.get(column)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where}: column {column!r} must be a finite number, got {value!r}")
    return float(value)


def load_pair_data(
    config: PairDataConfig, tokenizer: Any, seed: int, synthetic: Generator
) -> tuple[list[PairExample], list[PairExample], dict[str, PairStats]]:
    """Train and held-out pairs for ``config``; ``synthetic(n, seed)`` makes rows when path is "synthetic"."""
    if config.sources:
        mixture = load_mixture(config, seed, synthetic, lambda rows, section: tokenize_pairs(rows, section, tokenizer))
        return mixture.train, mixture.held_out, mixture.stats()
    train_rows, eval_rows = train_eval_rows(config, seed, synthetic)
    train, train_stats = tokenize_pairs(train_rows, config, tokenizer)
    stats = {"train": train_stats}
    evals: list[PairExample] = []
    if eval_rows is not None and len(eval_rows):
        evals, stats["eval"] = tokenize_pairs(eval_rows, config, tokenizer)
    return train, evals, stats
