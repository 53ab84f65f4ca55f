"""Naming tools in a config and loading them: a Tool is a Python function and its JSON schema.

A config names each tool the way it names reward functions (:mod:`tunekit.rl.rewards`):

- a built-in name (``calculator``, ``python``);
- a file and a function, ``tools/search.py:search`` or ``/abs/path/tools.py:lookup`` (a relative path is looked up
  in the current directory, then in the tunekit repository);
- a dotted import path, ``my_pkg.tools:lookup``.

The schema is written from the function's signature and Google-style docstring by
``transformers.utils.get_json_schema``, unless the config gives one (``schema:``). Only the named file or module
is loaded, and only to read the function's schema: the call itself runs in the sandbox's worker process
(:mod:`tunekit.tools.sandbox`), which loads it again there.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunekit.errors import ConfigError, require
from tunekit.tools.builtin import BUILTIN_TOOLS, IN_PROCESS_SAFE
from tunekit.user_code import module_from_file

# The repository that holds tunekit/ (an editable install or a checkout on sys.path).
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ToolSpec:
    """One entry of a config's ``tools.use`` list."""

    # Required: a built-in (calculator, python), "file.py:function" or "pkg.module:function".
    name: str = ""
    # Subtracted from the completion's reward for each call of this tool (0: free).
    cost: float = 0.0
    # The JSON schema shown to the model ({"type": "function", "function": {...}}); null: written from the function's
    # signature and docstring.
    schema: dict[str, Any] | None = None
    # Where a call runs: auto (built-in calculator in the training process, every other tool in the sandbox), sandbox,
    # or process (in the training process: no time or memory limit; only for tools you trust to be quick).
    run_in: Literal["auto", "sandbox", "process"] = "auto"


@dataclass
class ToolsConfig:
    """The ``tools`` section of the RL recipes: which tools rollouts may call, and the sandbox's limits."""

    # Tools the policy may call (empty: none; rollouts are single-turn). Each: {name, cost, schema, run_in}.
    use: list[ToolSpec] = field(default_factory=list)
    # Assistant turns per rollout: a turn that calls a tool is followed by the tool's answer and another turn, up to
    # this many; sampling.max_new_tokens bounds each turn.
    max_turns: int = 3
    # Wall-clock seconds one sandboxed call may run before it is stopped.
    timeout_s: float = 5.0
    # Address-space limit of a sandboxed call's process, in MiB.
    memory_mb: int = 512
    # A tool's answer is cut to this many characters before the model sees it.
    max_output_chars: int = 512
    # Sandboxed calls run at the same time, at most.
    parallel_calls: int = 4

    def __post_init__(self) -> None:
        require(self.max_turns >= 1, "max_turns", f"must be at least 1, got {self.max_turns}")
        require(self.timeout_s > 0, "timeout_s", f"must be positive, got {self.timeout_s}")
        require(
            self.memory_mb >= 64, "memory_mb", f"must be at least 64 (a Python process needs it), got {self.memory_mb}"
        )
        require(self.max_output_chars >= 16, "max_output_chars", f"must be at least 16, got {self.max_output_chars}")
        require(self.parallel_calls >= 1, "parallel_calls", f"must be at least 1, got {self.parallel_calls}")
        names = [spec.name.strip() for spec in self.use]
        require(all(names), "use", "has an entry without a name")


@dataclass
class Tool:
    """A loaded tool: its name as the model calls it, the function, its schema and how to load it again."""

    name: str  # the function name in the schema, which the model writes in its calls
    source: str  # the config's name for it, which the sandbox's worker loads again
    fn: Callable[..., Any]
    schema: dict[str, Any]
    cost: float = 0.0
    sandboxed: bool = True


def load_tools(specs: list[ToolSpec], key: str = "tools.use") -> list[Tool]:
    """Load every tool up front, so that a config mistake fails before any model is loaded, naming the config entry
    (``key[i]``) at fault; two tools with one name are refused (the model could not tell them apart)."""
    tools = []
    for i, spec in enumerate(specs):
        try:
            tools.append(load_tool(spec))
        except ConfigError as err:
            raise ConfigError(f"{key}[{i}]: {err}") from None
    seen: dict[str, str] = {}
    for tool in tools:
        if tool.name in seen:
            raise ConfigError(f"tools {seen[tool.name]!r} and {tool.source!r} are both called {tool.name!r}")
        seen[tool.name] = tool.source
    return tools


def load_tool(spec: ToolSpec) -> Tool:
    fn = load_tool_function(spec.name)
    schema = spec.schema if spec.schema is not None else schema_of(spec.name, fn)
    check_schema(spec.name, schema)
    builtin = spec.name.strip() in IN_PROCESS_SAFE
    sandboxed = spec.run_in == "sandbox" or (spec.run_in == "auto" and not builtin)
    return Tool(schema["function"]["name"], spec.name.strip(), fn, schema, spec.cost, sandboxed)


def schema_of(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema ``transformers`` writes from ``fn``'s signature and docstring; a ConfigError naming the tool
    when it cannot (a parameter without a type hint or without a line in the docstring's Args)."""
    from transformers.utils import get_json_schema

    try:
        schema = get_json_schema(fn)
    except Exception as err:
        raise ConfigError(
            f"tool {name!r}: no JSON schema can be written from its signature and docstring ({err}); give every "
            "parameter a type hint and a line under Args: in the docstring, or set the tool's schema in the config"
        ) from None
    schema["function"].pop("return", None)
    return schema


def check_schema(name: str, schema: Any) -> None:
    """A schema the chat template can show: ``{"type": "function", "function": {"name", "parameters"}}``."""
    function = schema.get("function") if isinstance(schema, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ConfigError(f"tool {name!r}: its schema must be {{type: function, function: {{name, parameters}}}}")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or not isinstance(parameters.get("properties", {}), dict):
        raise ConfigError(f"tool {name!r}: its schema's function.parameters must be an object with properties")


def schemas_for(names: list[str], key: str = "data.tools") -> list[dict[str, Any]]:
    """The schemas of the tools ``names`` (config-level tool lists of the SFT data)."""
    return [tool.schema for tool in load_tools([ToolSpec(name=name) for name in names], key)]


# ----------------------------------------------------------------------------------------------------- loading


def load_tool_function(name: str, repo_root: Path | None = None) -> Callable[..., Any]:
    """Resolve a tool's config name to its function; a ConfigError naming what is wrong otherwise."""
    root = Path(repo_root) if repo_root is not None else REPO_ROOT
    name = name.strip()
    if name in BUILTIN_TOOLS:
        return BUILTIN_TOOLS[name]
    target, colon, attr = name.rpartition(":")
    if colon and (target.endswith(".py") or "/" in target):
        return _attribute(name, _module_from_file(name, _find_file(name, target, root)), attr)
    if colon and target and attr:
        try:
            module = importlib.import_module(target)
        except Exception as err:
            raise ConfigError(f"tool {name!r}: importing {target} failed: {type(err).__name__}: {err}") from None
        return _attribute(name, module, attr)
    raise ConfigError(
        f"unknown tool {name!r}; use a built-in ({', '.join(sorted(BUILTIN_TOOLS))}), a file and function "
        "('my_tools.py:lookup') or an import path ('my_pkg.tools:lookup')"
    )


def _find_file(name: str, path_text: str, root: Path) -> Path:
    path = Path(path_text).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, root / path]
    found = next((c.resolve() for c in candidates if c.is_file()), None)
    if found is None:
        raise ConfigError(f"tool {name!r}: file {path_text} not found (looked for {' or '.join(map(str, candidates))})")
    return found


def _module_from_file(name: str, path: Path) -> Any:
    """Execute a tool file as a module of its own, once per process (:func:`tunekit.user_code.module_from_file`)."""
    return module_from_file(path, "tunekit_tool", f"tool {name!r}")


def _attribute(name: str, module: Any, attr: str) -> Callable[..., Any]:
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"tool {name!r}: {getattr(module, '__file__', module)} has no function {attr!r}")
    if not callable(fn) or inspect.isclass(fn):
        raise ConfigError(f"tool {name!r}: {attr!r} is not a function")
    return fn
