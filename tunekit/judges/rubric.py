"""Rubrics: the editable instructions an LLM judge is prompted with, and the answers it may give.

A rubric is a YAML file (the shipped ones are in ``rubrics/`` of the repository; a config names one by its stem,
``helpfulness``, or by its path)::

    kind: pairwise                  # pairwise: which of two responses is better; pointwise: a score for one
    system: You judge ...           # optional system message
    template: |                     # the user message; {prompt} and {response_a} + {response_b} (pairwise) or
      ...                           # {response} (pointwise) are filled in, and any other {name} from the
                                    # data row's column of that name (e.g. {reference})
    reasoning: Explain ...          # optional: asked before the verdict when the judge reasons first
    verdict_prefix: "Verdict: "     # written after the judge's turn starts; the verdict is its next token
    choices: [A, B]                 # the allowed answers, told apart by their first token
    values: [1, 2, 3, 4, 5]         # pointwise: the score of each choice (default 1 .. number of choices)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tunekit.errors import ConfigError, DataError

# The shipped rubrics, by stem, live here (beside reward_models/ in the source tree).
RUBRICS_DIR = Path(__file__).resolve().parents[2] / "rubrics"
_FIELD = re.compile(r"\{(\w+)\}")
REQUIRED_FIELDS = {"pairwise": ("prompt", "response_a", "response_b"), "pointwise": ("prompt", "response")}


@dataclass(frozen=True)
class Rubric:
    name: str
    kind: Literal["pairwise", "pointwise"]
    template: str
    choices: tuple[str, ...]
    values: tuple[float, ...]
    verdict_prefix: str = "Verdict: "
    system: str | None = None
    reasoning: str | None = None
    columns: tuple[str, ...] = field(default=())  # the data columns the template reads besides the responses

    def fill(self, values: dict[str, str]) -> str:
        """The template with each ``{name}`` replaced by ``values[name]``; text inside the values is left as it is."""
        return _FIELD.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), self.template)


def load_rubric(name: str) -> Rubric:
    """A shipped rubric by stem (``helpfulness``) or a YAML file; a ConfigError naming the rubric and the field at
    fault for anything it lacks."""
    path = Path(name)
    if not path.suffix:
        path = RUBRICS_DIR / f"{name}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in RUBRICS_DIR.glob("*.yaml")))
        raise ConfigError(f"rubric {name!r} is neither a shipped rubric ({shipped}) nor a YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"rubric {path} is not valid YAML: {err}") from None
    return parse_rubric(raw, str(path))


def parse_rubric(raw: Any, where: str) -> Rubric:
    if not isinstance(raw, dict):
        raise ConfigError(f"rubric {where} must be a mapping with kind, template and choices")
    kind = raw.get("kind")
    if kind not in REQUIRED_FIELDS:
        raise ConfigError(f"rubric {where}: kind must be pairwise or pointwise, got {kind!r}")
    template = raw.get("template")
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"rubric {where}: template is missing or empty")
    fields = set(_FIELD.findall(template))
    missing = [f for f in REQUIRED_FIELDS[kind] if f not in fields]
    if missing:
        needed = ", ".join("{" + f + "}" for f in REQUIRED_FIELDS[kind])
        lacks = ", ".join("{" + f + "}" for f in missing)
        raise ConfigError(f"rubric {where}: a {kind} template must contain {needed}; it lacks {lacks}")
    choices = raw.get("choices", ["A", "B"] if kind == "pairwise" else None)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str | int) for c in choices):
        raise ConfigError(f"rubric {where}: choices must be a list of at least two answers")
    choices = [str(c) for c in choices]
    if kind == "pairwise" and len(choices) != 2:
        raise ConfigError(f"rubric {where}: a pairwise rubric has exactly two choices (first, second), got {choices}")
    values = raw.get("values", list(range(1, len(choices) + 1)))
    if not isinstance(values, list) or len(values) != len(choices):
        raise ConfigError(f"rubric {where}: values must give one number per choice ({len(choices)})")
    prefix = raw.get("verdict_prefix", "Verdict: ")
    return Rubric(
        name=where,
        kind=kind,
        template=template,
        choices=tuple(choices),
        values=tuple(float(v) for v in values),
        verdict_prefix=str(prefix),
        system=raw.get("system"),
        reasoning=raw.get("reasoning"),
        columns=tuple(sorted(fields - set(REQUIRED_FIELDS[kind]))),
    )


def row_values(rubric: Rubric, columns: dict[str, list[Any]], i: int, where: str = "") -> dict[str, str]:
    """The template fields of row ``i`` that come from data columns; a DataError naming the column when a row
    lacks one (e.g. {reference} on data without a reference column)."""
    out = {}
    for name in rubric.columns:
        values = columns.get(name)
        if values is None or values[i] is None:
            at = f"{where}: " if where else ""
            raise DataError(f"{at}rubric {rubric.name} reads {{{name}}}, which this data has no column {name!r} for")
        out[name] = str(values[i])
    return out
