"""The layers of tunekit keep their rules: a lower layer never imports a higher one.

Imports are read from the source with ``ast`` (nothing is imported), including those inside functions and under
``TYPE_CHECKING``: a deferred import still ties one layer to another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tunekit"

# Layer -> the packages (tunekit's own, or third-party) none of its modules may import.
FORBIDDEN = {
    "data": ("tunekit.models", "tunekit.rl", "tunekit.train", "tunekit.recipes"),
    "losses": (
        "tunekit.models",
        "tunekit.rl",
        "tunekit.train",
        "tunekit.data",
        "tunekit.recipes",
        "accelerate",
        "transformers",
    ),
    "models": ("tunekit.train", "tunekit.rl", "tunekit.recipes"),
    # The fast paths sit under models/ and rl/, which reach them only through tunekit.fast (docs/fast-paths.md).
    "fast": ("tunekit.models", "tunekit.rl", "tunekit.train", "tunekit.recipes", "tunekit.losses"),
    "train": ("tunekit.recipes",),
    # Judges score and compare with models and reward functions; training and recipes use them, not the reverse.
    "judges": ("tunekit.train", "tunekit.recipes"),
    # The AI-feedback machinery under the label and constitution recipes.
    "feedback": ("tunekit.recipes",),
}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of everything ``path`` imports; ``from a import b`` gives both ``a`` and ``a.b``, since
    ``b`` may be a module."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def violations(root: Path, layer: str) -> list[str]:
    """One line per offending import statement of ``root/layer``: where it is and what it imports."""
    out: dict[tuple[str, int], str] = {}
    for path in sorted((root / layer).rglob("*.py")):
        where = str(path.relative_to(root.parent))
        for line, name in imported_names(root, path):
            if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[layer]):
                out.setdefault((where, line), name)
    return [f"{where}:{line} imports {name}" for (where, line), name in sorted(out.items())]


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer):
    assert (PACKAGE / layer).is_dir()
    assert violations(PACKAGE, layer) == [], f"tunekit/{layer}/ may not import {', '.join(FORBIDDEN[layer])}"


def test_the_checker_sees_every_form_of_import(tmp_path):
    root = tmp_path / "tunekit"
    (root / "data").mkdir(parents=True)
    (root / "data" / "m.py").write_text(
        "import tunekit.rl.rollout\n"
        "from tunekit import models\n"
        "from ..train.rng import seeded_rng\n"
        "def f():\n"
        "    from tunekit.recipes import sft\n"
        "from tunekit.data.sft import Example\n"
        "from . import formats\n"
    )
    assert violations(root, "data") == [
        "tunekit/data/m.py:1 imports tunekit.rl.rollout",
        "tunekit/data/m.py:2 imports tunekit.models",
        "tunekit/data/m.py:3 imports tunekit.train.rng",
        "tunekit/data/m.py:5 imports tunekit.recipes",
    ]
