"""Turning one row of a dataset into text segments marked trainable or not.

A *segment list* is ``[(text, trainable), ...]``: concatenated, the segments are the full training text, and
``trainable`` says whether the loss is taken on that segment's tokens. Formats:

- ``text``: one segment, all trainable (continued pre-training, or plain SFT on documents).
- ``prompt_completion``: the prompt (not trainable) then the completion and EOS (trainable). A string prompt
  is put into ``prompt_template`` first (e.g. ``"Question: {prompt}\nAnswer: "``); a prompt given as chat
  messages is rendered with the chat template instead.
- ``messages``: a chat rendered with the tokenizer's chat template; each assistant turn is trainable, the tool
  calls it writes (``tool_calls``, rendered by the template) included; ``tool`` turns, the tools' answers, are not.
  The row's ``tools`` column (JSON schemas), or the config's tool list, reaches the template's ``tools`` argument.

Chat segments are found by rendering growing prefixes of the conversation, so the result is exactly the text
the template produces, and the assistant spans are exactly what the model must learn to generate.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from tunekit.errors import DataError

Segment = tuple[str, bool]
Format = Literal["text", "prompt_completion", "messages"]
ROLES = ("system", "user", "assistant", "tool")


def detect_format(row: dict[str, Any], columns: dict[str, str], where: str) -> Format:
    """Guess the format from the columns of the first row."""
    if columns["messages"] in row:
        return "messages"
    if columns["prompt"] in row and columns["completion"] in row:
        return "prompt_completion"
    if columns["text"] in row:
        return "text"
    raise DataError(
        f"{where}: cannot tell the data format from its columns {sorted(row)}; expected "
        f"{columns['text']!r} (text), {columns['prompt']!r} + {columns['completion']!r} (prompt_completion) or "
        f"{columns['messages']!r} (messages), or set data.format and the data.*_column keys"
    )


def row_segments(
    row: dict[str, Any],
    fmt: Format,
    columns: dict[str, str],
    tokenizer: Any,
    where: str,
    prompt_template: str = "{prompt}",
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[Segment], bool]:
    """Segments of ``row`` and whether a BOS token should be put in front (False when a chat template did it).
    ``tools``: the JSON schemas a chat row without a tools column of its own shows the template."""
    if fmt == "text":
        return [(_string(row, columns["text"], where), True)], True
    if fmt == "prompt_completion":
        prompt = required_column(row, columns["prompt"], where)
        completion = required_column(row, columns["completion"], where)
        if isinstance(prompt, list):
            prompt_text = render_chat(
                chat_messages(prompt, where, columns["prompt"]), tokenizer, add_generation_prompt=True
            )
            completion_text = assistant_text(completion, where, columns["completion"])
            return [(prompt_text, False), (completion_text + tokenizer.eos_token, True)], False
        if not isinstance(prompt, str):
            raise DataError(f"{where}: column {columns['prompt']!r} must be a string or a list of messages")
        completion_text = assistant_text(completion, where, columns["completion"])
        return [
            (prompt_template.replace("{prompt}", prompt), False),
            (completion_text + tokenizer.eos_token, True),
        ], True
    messages = chat_messages(required_column(row, columns["messages"], where), where, columns["messages"])
    return chat_segments(messages, tokenizer, where, row_tools(row, columns, where, tools)), False


def row_tools(
    row: dict[str, Any], columns: dict[str, str], where: str, default: list[dict[str, Any]] | None
) -> list[dict[str, Any]] | None:
    """The tool schemas of a chat row: its own ``tools`` column when it has one (a list of JSON schemas, or a JSON
    string of one), else ``default``."""
    value = row.get(columns.get("tools", "tools"))
    if value is None:
        return default or None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: column {columns.get('tools', 'tools')!r} is a string that is not JSON") from None
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise DataError(f"{where}: column {columns.get('tools', 'tools')!r} must be a list of tool schemas (objects)")
    return value or None


def empty_part(row: dict[str, Any], fmt: Format, columns: dict[str, str]) -> str | None:
    """What the model would learn from in ``row`` (already checked by :func:`row_segments`), named, when it is
    empty or only whitespace: the text, the completion, or every assistant turn. None when there is something."""
    if fmt == "text":
        return f"column {columns['text']!r}" if not row[columns["text"]].strip() else None
    if fmt == "prompt_completion":
        completion = row[columns["completion"]]
        text = completion if isinstance(completion, str) else completion[0]["content"]
        return f"column {columns['completion']!r}" if not text.strip() else None
    turns = [m.get("content") or "" for m in row[columns["messages"]] if m["role"] == "assistant"]
    calls = any(m.get("tool_calls") for m in row[columns["messages"]] if m["role"] == "assistant")
    return "every assistant turn" if all(not turn.strip() for turn in turns) and not calls else None


def chat_segments(
    messages: list[dict[str, Any]], tokenizer: Any, where: str, tools: list[dict[str, Any]] | None = None
) -> list[Segment]:
    """Render ``messages`` (and ``tools``, the schemas) with the chat template; assistant turns, with the tool calls
    they write, are the trainable segments."""
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant message, so there is nothing to train on")
    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            before = (
                render_chat(messages[:i], tokenizer, add_generation_prompt=True, tools=tools)
                if i
                else _opening_header(message, tokenizer, where, tools)
            )
            segments.append((_after(before, done, where), False))
            done = before
        rendered = render_chat(messages[: i + 1], tokenizer, add_generation_prompt=False, tools=tools)
        segments.append((_after(rendered, done, where), message["role"] == "assistant"))
        done = rendered
    return [(text, trainable) for text, trainable in segments if text]


def _opening_header(message: dict[str, Any], tokenizer: Any, where: str, tools: list | None = None) -> str:
    """What the template writes before the content of a conversation's first message (BOS, a default system
    prompt, the role header): the untrained part when the conversation opens with an assistant turn."""
    marker = "\x00tunekit-content\x00"
    rendered = render_chat([{**message, "content": marker}], tokenizer, add_generation_prompt=False, tools=tools)
    if marker not in rendered:
        raise DataError(
            f"{where}: the tokenizer's chat template does not write an assistant message's content as given, so "
            "the turn cannot be located"
        )
    return rendered[: rendered.index(marker)]


def render_chat(
    messages: list[dict[str, Any]], tokenizer: Any, add_generation_prompt: bool, tools: list | None = None
) -> str:
    # Only a conversation with tools passes the argument: some templates write a tools block for tools=[] too.
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)


def _after(text: str, prefix: str, where: str) -> str:
    if not text.startswith(prefix):
        raise DataError(
            f"{where}: the tokenizer's chat template renders a conversation differently from its own beginning, "
            "so assistant turns cannot be located; use a template that renders conversations incrementally"
        )
    return text[len(prefix) :]


def assistant_text(value: Any, where: str, column: str) -> str:
    """A response given as a string, or as a list holding one assistant message with string content."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        (message,) = chat_messages(value, where, column)
        if message["role"] == "assistant":
            return message["content"]
    raise DataError(f"{where}: column {column!r} must be a string or one assistant message")


def required_column(row: dict[str, Any], column: str, where: str) -> Any:
    """``row[column]``; a DataError naming the row when the column is absent or null."""
    if column not in row:
        raise DataError(f"{where}: missing column {column!r} (the row has {sorted(row)})")
    value = row[column]
    if value is None:
        raise DataError(f"{where}: column {column!r} is empty (null)")
    return value


def _string(row: dict[str, Any], column: str, where: str) -> str:
    value = required_column(row, column, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be a string, got {type(value).__name__}")
    return value


def chat_messages(value: Any, where: str, column: str) -> list[dict[str, Any]]:
    """``value`` as a list of ``{"role", "content"}`` messages; anything else is an error naming the row. An assistant
    message may carry ``tool_calls`` (then its content may be empty or null) and a tool message a ``name``; both are
    kept for the chat template."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: column {column!r} must be a non-empty list of messages")
    for j, message in enumerate(value):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls is not None and (not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)):
            raise DataError(f"{where}: message {j} of {column!r} has tool_calls that are not a list of objects")
        if isinstance(message, dict) and calls and message.get("content") is None:
            message = {**message, "content": ""}
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: message {j} of {column!r} needs 'role' and 'content' keys")
        if message["role"] not in ROLES:
            raise DataError(f"{where}: message {j} has role {message['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise DataError(
                f"{where}: message {j} of {column!r} has content that is not a string "
                f"({type(message['content']).__name__}); content parts are not supported"
            )
    return [_kept(m) for m in value]


def _kept(message: dict[str, Any]) -> dict[str, Any]:
    """The keys of a message the chat template reads: role and content, and tool_calls or a tool's name."""
    kept = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        kept["tool_calls"] = message["tool_calls"]
    if message["role"] == "tool" and isinstance(message.get("name"), str):
        kept["name"] = message["name"]
    return kept
