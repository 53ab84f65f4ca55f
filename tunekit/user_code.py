"""User code named in a config (reward functions, tools): a Python file executed as a module of its own."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from tunekit.errors import ConfigError


def module_from_file(path: Path, prefix: str, label: str) -> ModuleType:
    """Execute the file at ``path`` as a module, once per process; ``label`` names it in errors ("reward 'x'").

    The module name is ``prefix`` plus the file's stem and a hash of its full path, so reward_models/math.py never
    takes the place of the standard library's ``math`` in sys.modules and two files called rewards.py do not
    collide. It is registered in sys.modules because dataclasses and pickling look modules up there.
    """
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:10]
    module_name = f"{prefix}_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{label}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(f"{label}: loading {path} raised {type(err).__name__}: {err}") from err
    return module
