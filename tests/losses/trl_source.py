"""Run TRL's own loss code in tests without paying for importing its trainer modules.

Importing ``trl.trainer.dpo_trainer`` pulls in transformers' Trainer, datasets, peft and bitsandbytes: about ten
seconds on a CI core. The loss code itself needs only torch. So this compiles the named functions and methods
straight from TRL's installed source files (``ast``, no import of those modules), with the few globals they use
supplied by the test. What runs is TRL's code as installed, line for line; tracebacks point into TRL's files.
"""

import __future__

import ast
import functools
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

TRL_VERSION = importlib.metadata.version("trl")


def _trl_file(relative_path: str) -> Path:
    # find_spec on the top-level package locates it without executing trl/__init__.py.
    spec = importlib.util.find_spec("trl")
    assert spec is not None and spec.submodule_search_locations, "trl is not installed"
    return Path(spec.submodule_search_locations[0]) / relative_path


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def trl_functions(relative_path: str, names: list[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Compile ``names`` ("func" for a module-level function, "Class.method" for a method) from the TRL file at
    ``relative_path`` (e.g. "trainer/dpo_trainer.py") into ``namespace``; returns {name: function}.

    Decorators such as @staticmethod are kept, so the results can be put in a stand-in class as they are.
    """
    path = _trl_file(relative_path)
    tree = _parse(path)
    top = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    found = {}
    for name in names:
        owner, _, func = name.rpartition(".")
        scope = top[owner].body if owner else tree.body
        matches = [node for node in scope if isinstance(node, ast.FunctionDef) and node.name == func]
        assert matches, f"{name} not found in {path} (trl {TRL_VERSION})"
        # Postponed annotations: the signatures name transformers types that the namespace does not carry.
        module = ast.Module(body=matches, type_ignores=[])
        code = compile(module, str(path), "exec", flags=__future__.annotations.compiler_flag)
        exec(code, namespace)
        found[name] = namespace[func]
    return found


def stand_in(methods: dict[str, Any], **attributes: Any) -> Any:
    """An object of a throwaway class whose methods are ``methods`` and whose attributes are ``attributes``: the
    minimum of a TRL trainer that its loss code reads."""
    cls = type("TrainerStandIn", (), {name.rpartition(".")[2]: fn for name, fn in methods.items()})
    obj = cls()
    obj.__dict__.update(attributes)
    return obj


class IdentityAccelerator:
    """One process: gathering returns the tensor itself."""

    device = "cpu"

    @staticmethod
    def gather(tensor):
        return tensor

    gather_for_metrics = gather


def namespace(**extra: Any) -> dict[str, Any]:
    """Module globals for the compiled TRL code: torch, nn, F and whatever else the chosen functions reference."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    return {"torch": torch, "nn": nn, "F": F, "__name__": "trl_source_under_test", **extra}
