"""Constitutional critique and revision: principles, and the conversations that ask for a critique and a revision.

A principles file is YAML (the shipped one is recipes/constitution/principles.yaml)::

    critique_template: |        # the user turn that asks for a critique; {principle} is replaced by the principle
      ...
    revision_template: |        # the user turn that asks for the revised answer, after the critique
      ...
    principles:                 # one is drawn per prompt, with the run's seed
      - name: accurate          # written to each row's principle column
        text: The answer is correct ...

The model answers the prompt; then, in one conversation rendered with its chat template, it is shown its answer and
asked for a critique against the principle, and then asked for a revision:

    user: <prompt>   assistant: <answer>   user: <critique request>   assistant: <critique>
    user: <revision request>   assistant: <revised answer>
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import tunekit
from tunekit.data.formats import render_chat
from tunekit.data.prompts import PromptExample
from tunekit.errors import ConfigError

REPO_ROOT = Path(tunekit.__file__).resolve().parents[1]
FIELD = "{principle}"


@dataclass(frozen=True)
class Principle:
    name: str
    text: str


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    critique_template: str
    revision_template: str

    def critique_request(self, principle: Principle) -> str:
        return self.critique_template.replace(FIELD, principle.text).strip()

    def revision_request(self, principle: Principle) -> str:
        return self.revision_template.replace(FIELD, principle.text).strip()


def resolve_path(path: str) -> Path:
    """``path`` as given, or else inside the repository (so the shipped file is found from any directory)."""
    given = Path(path).expanduser()
    if given.is_file() or given.is_absolute():
        return given
    return REPO_ROOT / given


def load_constitution(
    path: str, critique_template: str | None = None, revision_template: str | None = None
) -> Constitution:
    """The principles file at ``path`` (config key ``principles``), its templates replaced by the config's where
    given; a ConfigError naming the file, the entry or the key at fault."""
    file = resolve_path(path)
    if not file.is_file():
        raise ConfigError(
            f"principles {path!r} is not a file; give a YAML file of principles (see docs/ai-feedback.md)"
        )
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"principles file {file} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"principles file {file} must be a mapping with principles, critique_template and revision_template"
        )
    entries = raw.get("principles")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"principles file {file}: principles must be a non-empty list of {{name, text}} entries")
    principles = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) and entry[k].strip() for k in ("name", "text")
        ):
            raise ConfigError(f"principles file {file}: entry {i} of principles needs a non-empty name and text")
        principles.append(Principle(entry["name"].strip(), entry["text"].strip()))
    names = [p.name for p in principles]
    if len(set(names)) != len(names):
        raise ConfigError(f"principles file {file}: principle names must be distinct, got {names}")
    templates = {}
    for key, given in (("critique_template", critique_template), ("revision_template", revision_template)):
        text, where = (
            (given, f"config key {key}") if given is not None else (raw.get(key), f"principles file {file}, key {key}")
        )
        if not isinstance(text, str) or FIELD not in text:
            raise ConfigError(f"{where}: the template must be a string containing {FIELD}, got {text!r}")
        templates[key] = text
    return Constitution(tuple(principles), **templates)


def user_turns(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A row's prompt as chat messages: a string is one user turn, messages are kept as they are."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def critique_conversation(prompt: Any, answer: str, request: str) -> list[dict[str, str]]:
    """The conversation whose next assistant turn is the critique."""
    return [*user_turns(prompt), {"role": "assistant", "content": answer}, {"role": "user", "content": request}]


def revision_conversation(
    prompt: Any, answer: str, critique_request: str, critique: str, request: str
) -> list[dict[str, str]]:
    """The conversation whose next assistant turn is the revised answer."""
    return [
        *critique_conversation(prompt, answer, critique_request),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": request},
    ]


def conversation_prompt(messages: list[dict[str, str]], tokenizer: Any, like: PromptExample) -> PromptExample:
    """``messages`` rendered with the chat template and its generation prompt, as a prompt to sample the next
    assistant turn from (``like``: the data row it continues, for its index and position in error messages)."""
    text = render_chat(messages, tokenizer, add_generation_prompt=True)
    return PromptExample(text, tokenizer(text, add_special_tokens=False)["input_ids"], {}, like.index, like.where)
