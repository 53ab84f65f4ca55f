"""The configuration reference (docs/configuration-reference.md), generated from the recipes' config classes.

    python -m tunekit.config_reference > docs/configuration-reference.md

Every key, its type, the recipe's own default and the comment written above the field in the source (or after
it on the same line). A test checks that the committed page equals this output, so the reference cannot drift
from the code, and that every key has a description.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from typing import Any, Literal, Union

import yaml

_FIELD = re.compile(r"^(\w+)\s*:")
# A string that YAML reads back as itself without quotes, and that reads plainly in a table.
_PLAIN = re.compile(r"^[A-Za-z0-9_./<>@+-][A-Za-z0-9_./:<>@+ -]*$")

Row = tuple[str, str, str, str]  # (key, type, default, meaning)


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment, over ``cls`` and its dataclass bases (a subclass's own comment wins).

    A field's comment is the run of ``#`` lines directly above its declaration, or else a ``#`` comment at the
    end of the declaration's line. Only the class body's own level counts: comments inside methods and nested
    classes are not field comments.
    """
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            comments.update(_class_comments(klass))
    return comments


def _class_comments(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    code_lines: set[int] = set()
    inside_strings: set[int] = set()  # lines after the first of a multi-line string (docstrings)
    trailing: dict[int, str] = {}  # line number -> the comment that ends a line of code
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0]
            if lines[row - 1][: token.start[1]].strip():
                trailing[row] = _comment_text(token.string)
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(token.start[0], token.end[0] + 1))
            if token.type == tokenize.STRING:
                inside_strings.update(range(token.start[0] + 1, token.end[0] + 1))
    start = next(i for i, line in enumerate(lines) if line.startswith("class ")) + 1  # after decorators
    body_indent = None
    comments: dict[str, str] = {}
    pending: list[str] = []
    for number, line in enumerate(lines[start:], start=start + 1):
        stripped = line.strip()
        if not stripped or number in inside_strings:
            pending = []
            continue
        indent = len(line) - len(line.lstrip())
        if body_indent is None:
            body_indent = indent
        if indent != body_indent:
            if number not in code_lines or indent < body_indent:
                pending = []
            continue
        if number not in code_lines and stripped.startswith("#"):
            pending.append(_comment_text(stripped))
            continue
        match = _FIELD.match(stripped)
        if match:
            text = " ".join(pending) or trailing.get(number, "")
            if text:
                comments[match.group(1)] = text
        pending = []
    return comments


def _comment_text(comment: str) -> str:
    return comment.lstrip("#").strip()


def type_name(hint: Any) -> str:
    """A type as a user writes its values: ``int | null``, ``'sdpa' | 'eager'``, ``list[str]``."""
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        (item, *_) = typing.get_args(hint) or (Any,)
        return f"list[{type_name(item)}]"
    if origin is dict or hint is dict:
        return "mapping"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def yaml_value(value: Any) -> str:
    """A default as one would write it in a YAML config or a ``key=value`` override (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and yaml.safe_load(value) == value:
            return value
        return json.dumps(value)  # double-quoted JSON is valid YAML and shows escapes such as \n
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_value(k)}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return repr(value)


def _item_class(hint: Any) -> type | None:
    """The dataclass X of a ``list[X]`` hint, else None."""
    if typing.get_origin(hint) in (list, tuple):
        args = typing.get_args(hint)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def rows(config: Any, prefix: str = "") -> list[Row]:
    """(key, type, default, meaning) for every leaf key of the config instance ``config``.

    A nested dataclass contributes its own keys (``train.lr``); a list of dataclasses (``rewards``) gets a row
    for the list and one per field of an item (``rewards[].weight``, default: what an item leaves out).
    """
    cls = type(config)
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    out: list[Row] = []
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.extend(rows(value, key + "."))
            continue
        item = _item_class(hints[f.name])
        kind = f"list[{item.__name__}]" if item else type_name(hints[f.name])
        out.append((key, kind, yaml_value(value), comments.get(f.name, "")))
        if item is not None:
            out.extend(rows(item(), key + "[]."))
    return out


def recipes() -> dict[str, tuple[type, str, str]]:
    """Recipe name -> (its config class, the docs page or page#section that explains it, that link's text)."""
    from tunekit.recipes import (
        constitution,
        curate,
        distill,
        dpo,
        eval,
        export,
        generate,
        grpo,
        kto,
        label,
        ppo,
        pretrain,
        reward,
        sft,
    )

    return {
        "sft": (sft.SFTConfig, "sft.md", "sft.md"),
        "pretrain": (pretrain.PretrainConfig, "sft.md#continued-pre-training", "sft.md: continued pre-training"),
        "reward": (reward.RewardConfig, "reward.md", "reward.md"),
        "dpo": (dpo.DPOConfig, "dpo.md", "dpo.md"),
        "kto": (kto.KTOConfig, "kto.md", "kto.md"),
        "grpo": (grpo.GRPOConfig, "grpo.md", "grpo.md"),
        "ppo": (ppo.PPOConfig, "ppo.md", "ppo.md"),
        "distill": (distill.DistillConfig, "distill.md", "distill.md"),
        "generate": (generate.GenerateConfig, "distill.md#sequence-level-distillation", "distill.md: sequence level"),
        "eval": (eval.EvalConfig, "eval.md", "eval.md"),
        "export": (export.ExportConfig, "sft.md#export", "sft.md: export"),
        "label": (label.LabelConfig, "ai-feedback.md#rlaif-labelling", "ai-feedback.md: RLAIF labelling"),
        "constitution": (
            constitution.ConstitutionConfig,
            "ai-feedback.md#constitutional-critique-and-revision",
            "ai-feedback.md: constitutional critique and revision",
        ),
        "curate": (curate.CurateConfig, "data-mixtures.md#curation", "data-mixtures.md: curation"),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The whole page, as committed in docs/configuration-reference.md."""
    parts = [
        "# Configuration reference",
        "",
        "Generated by `python -m tunekit.config_reference > docs/configuration-reference.md` from the config",
        "classes and the comments above their fields; do not edit by hand. Every key can be set in a YAML file",
        "(`--config FILE`) or on the command line (`key.sub=value`); see [configuration.md](configuration.md).",
        "",
        "Defaults are each recipe's own and are written as you would write them in YAML (`null`, `true`,",
        "`[q_proj, v_proj]`). Types: `int | null` takes null, `'a' | 'b'` takes one of the quoted values. A key",
        "ending in `[].name` is a field of each item of a list: `rewards: [{name: math_correct, weight: 2.0}]`;",
        "its default is what an item that leaves the field out gets.",
    ]
    for name, (cls, page, label) in recipes().items():
        parts += ["", f"## {name}", "", f"`python -m tunekit.recipes.{name}`; see [{label}]({page}).", ""]
        parts += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key, kind, default, meaning in rows(cls()):
            cells = [f"`{key}`", f"`{kind}`", f"`{default}`", meaning]
            parts.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
