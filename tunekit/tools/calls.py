"""Tool calls in generated text: found in the chat template's format, their arguments checked, results recorded.

The format is Hermes/Qwen's, which the embedded tiny model's chat template writes too: one JSON object per call
between tags, ``<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 3"}}</tool_call>``. Anything
that does not parse (broken JSON, a missing name, arguments that are not an object, a call left open) is still a
call: a malformed one, answered with an error message the model can learn from, never an exception.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


@dataclass
class ToolCall:
    """One call as the model wrote it: ``error`` says why it cannot run (None: it can)."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None


@dataclass
class CallResult:
    """What a call gave: ``output`` is the text the model is shown (an error message when ``ok`` is false)."""

    name: str
    arguments: dict[str, Any]
    output: str
    ok: bool
    error: str | None = None  # the failure's kind in a few words, for samples.jsonl: "timeout", "raised", ...
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The call as one JSON-friendly dict for samples.jsonl."""
        out = asdict(self)
        out.pop("extra")
        return out


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every call in ``text``, in order; ``[]`` when the text calls no tool."""
    calls = []
    for match in _CALL.finditer(text):
        closed = match.group(0).endswith(CLOSE)
        calls.append(_parse_one(match.group(1), closed))
    return calls


def _parse_one(body: str, closed: bool) -> ToolCall:
    if not closed:
        return ToolCall("", {}, f"the tool call was not closed with {CLOSE}")
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        return ToolCall("", {}, f"the tool call is not valid JSON ({err.msg} at character {err.pos})")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return ToolCall("", {}, 'a tool call must be a JSON object with a "name" and "arguments"')
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI's form: the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCall(value["name"], {}, "the arguments are a string that is not JSON")
    if not isinstance(arguments, dict):
        return ToolCall(value["name"], {}, f"the arguments must be a JSON object, not {type(arguments).__name__}")
    return ToolCall(value["name"], arguments)


def argument_error(schema: dict[str, Any], fn: Any, arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` do not fit a tool (its schema's required keys and JSON types, and its signature), or None."""
    parameters = schema["function"].get("parameters", {})
    properties = parameters.get("properties", {})
    missing = [key for key in parameters.get("required", []) if key not in arguments]
    if missing:
        return f"missing argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    for key, value in arguments.items():
        expected = properties.get(key, {}).get("type")
        types = _JSON_TYPES.get(expected) if isinstance(expected, str) else None
        if types is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            return f"argument {key} must be of type {expected}, got {type(value).__name__}"
    try:
        inspect.signature(fn).bind(**arguments)
    except TypeError as err:
        return str(err)
    except ValueError:  # no signature to check (a C function)
        pass
    return None


def error_result(call: ToolCall, message: str, kind: str) -> CallResult:
    return CallResult(call.name, call.arguments, f"error: {message}", ok=False, error=kind)


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters with a note saying so, and whether it was cut."""
    if len(text) <= limit:
        return text, False
    note = f"... [truncated: {len(text) - limit} more characters]"
    return text[:limit] + note, True
