"""Reward functions for the RL recipes: naming them in a config and loading them (calling them on a batch:
:mod:`tunekit.rl.reward_calls`).

A reward function is plain Python with one contract::

    fn(prompts: list[str], completions: list[str], **columns, **kwargs) -> list[float]   # one float per completion

``columns`` are the batch's data columns (e.g. ``answer`` for GSM8K), one entry per completion, passed by name so a
function takes the columns it needs and ignores the rest with ``**columns``; ``kwargs`` are the function's own
options from the config. A recipe config lists its rewards as :class:`RewardSource` entries, each naming its
function in one of four ways:

- a built-in name from :data:`BUILTIN_REWARDS` (``math_correct``, ``format``, ``length_penalty``);
- a file and a function, ``reward_models/math.py:math_correct`` or ``/abs/path/my_rewards.py:score``; a relative
  path is looked up in the current directory first, then in the tunekit repository;
- a dotted import path, ``my_pkg.rewards:score`` or ``my_pkg.rewards.score``;
- a reward model, ``model:runs/reward-tiny/final``: a reward run's final/ (or a merged export), scored at the last
  real token through :class:`tunekit.models.reward.RewardScorer`.

Only the named file or module is loaded; directories are never scanned, so nothing runs that the config did not ask
for. Mistakes in the config are :class:`~tunekit.errors.ConfigError`; a function that raises or returns something
other than one finite number per completion is a :class:`RewardFunctionError`, whose message names the function
(and, for a raise, the completion it failed on).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import tunekit
from tunekit.errors import ConfigError, UserError
from tunekit.user_code import module_from_file

RewardFn = Callable[..., list[float]]

# Paths are relative to the tunekit repository root: these files ship in the source tree, not in the package.
BUILTIN_REWARDS: dict[str, str] = {
    "math_correct": "reward_models/math.py:math_correct",
    "format": "reward_models/format.py:format_regex",
    "length_penalty": "reward_models/format.py:length_penalty",
}

# The repository that holds tunekit/ and reward_models/ (an editable install or a checkout on sys.path).
REPO_ROOT = Path(tunekit.__file__).resolve().parents[1]

# "model:<dir>" names a reward model trained by the reward recipe, scored through its scoring API.
REWARD_MODEL_PREFIX = "model:"


@dataclass
class RewardSource:
    """One entry of a recipe config's list of rewards.

    ``name`` has a default only because the config loader builds every section from its defaults first; an empty
    name is refused when the function is loaded.
    """

    name: str = ""  # required: a built-in name, "file.py:function", "pkg.module:function" or "model:<dir>"
    weight: float = 1.0  # the total reward is sum(weight * reward) over the sources
    kwargs: dict[str, Any] = field(default_factory=dict)  # the function's own options, e.g. {"pattern": "..."}


class RewardFunctionError(UserError):
    """A reward function raised, or returned something other than one finite number per completion."""


# ----------------------------------------------------------------------------------------------------- loading


def load_reward_function(name: str, repo_root: Path | None = None) -> RewardFn:
    """Resolve a reward's ``name`` (see the module docstring for the forms) to the callable it names.

    ``repo_root`` is where built-ins and the fallback for relative file paths live (default: the repository this
    tunekit was imported from). Raises ConfigError for an unknown built-in, a missing file, module or function,
    a file that fails to load, or a name that is not callable.
    """
    root = Path(repo_root) if repo_root is not None else REPO_ROOT
    name = name.strip()
    if not name:
        raise ConfigError(f"a reward needs a name: {_forms_hint()}")
    if name.startswith(REWARD_MODEL_PREFIX):
        return reward_model_function(name[len(REWARD_MODEL_PREFIX) :])
    target, colon, attr = name.rpartition(":")
    if colon and _looks_like_file(target):
        return _function_from_file(name, target, attr, search=_search_dirs(target, root))
    if colon:
        return _function_from_module(name, target, attr)
    if _looks_like_file(name):
        raise ConfigError(f"reward {name!r} names a file but no function in it; write it as {name}:<function>")
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        return _function_from_module(name, module_name, attr)
    if name not in BUILTIN_REWARDS:
        raise ConfigError(f"unknown reward {name!r}; {_forms_hint()}")
    # A built-in always means the shipped function, so it is looked up in the repository only, never in the cwd.
    file_part, _, attr = BUILTIN_REWARDS[name].rpartition(":")
    return _function_from_file(name, file_part, attr, search=[root], builtin=True)


def reward_model_function(path: str) -> RewardFn:
    """A reward function that scores (prompt, completion) with a reward run's final/ (or a merged export)."""
    from tunekit.models.reward import RewardScorer

    if not (Path(path) / "config.json").is_file() and not (Path(path) / "adapter_config.json").is_file():
        raise ConfigError(
            f"reward {REWARD_MODEL_PREFIX}{path}: {path!r} is not a reward model directory (a reward run's final/ "
            "or a merged export)"
        )
    scorer = RewardScorer.from_pretrained(path)

    def score(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return scorer.score(prompts, completions)

    score.__name__ = f"reward_model({path})"
    return score


def load_reward_sources(
    sources: Sequence[RewardSource], repo_root: Path | None = None
) -> list[tuple[RewardSource, RewardFn]]:
    """Load every source's function once, up front, so a config mistake fails before any model is loaded."""
    return [(source, load_reward_function(source.name, repo_root)) for source in sources]


def _forms_hint() -> str:
    return (
        f"use a built-in ({', '.join(sorted(BUILTIN_REWARDS))}), a file and function "
        "('reward_models/math.py:math_correct'), an import path ('my_pkg.rewards:score') or a reward model "
        "('model:runs/reward-tiny/final')"
    )


def _looks_like_file(text: str) -> bool:
    return text.endswith(".py") or "/" in text or "\\" in text


def _search_dirs(path_text: str, root: Path) -> list[Path]:
    if Path(path_text).expanduser().is_absolute():
        return [Path("/")]  # joining an absolute path onto any directory gives the path itself
    return [Path.cwd(), root]


def _function_from_file(name: str, path_text: str, attr: str, search: list[Path], builtin: bool = False) -> RewardFn:
    candidates = [(base / Path(path_text).expanduser()).resolve() for base in search]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        looked = " or ".join(str(c) for c in dict.fromkeys(candidates))
        if builtin:
            raise ConfigError(
                f"built-in reward {name!r} lives in {looked}, which does not exist; the built-in rewards ship in "
                "the tunekit source tree (reward_models/), so install tunekit from a checkout (pip install -e .)"
            )
        raise ConfigError(f"reward {name!r}: file {path_text} not found (looked for {looked})")
    return _get_function(name, _module_from_file(name, path), attr, where=str(path))


def _module_from_file(name: str, path: Path) -> ModuleType:
    """Execute a reward file as a module of its own, once per process (:func:`tunekit.user_code.module_from_file`)."""
    return module_from_file(path, "tunekit_reward", f"reward {name!r}")


def _function_from_module(name: str, module_name: str, attr: str) -> RewardFn:
    if not module_name or not attr:
        raise ConfigError(f"reward {name!r} is not of the form pkg.module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConfigError(
                f"reward {name!r}: no module named {module_name!r} (is it installed, or is its directory on "
                f"PYTHONPATH?); {_forms_hint()}"
            ) from err
        raise ConfigError(f"reward {name!r}: importing {module_name} failed: {err}") from err
    except Exception as err:
        raise ConfigError(f"reward {name!r}: importing {module_name} raised {type(err).__name__}: {err}") from err
    return _get_function(name, module, attr, where=f"module {module_name}")


def _get_function(name: str, module: ModuleType, attr: str, where: str) -> RewardFn:
    obj: Any = module
    for part in attr.split("."):  # "Class.method" reaches one level in
        if not hasattr(obj, part):
            defined = sorted(
                key
                for key, value in vars(module).items()
                if callable(value) and not key.startswith("_") and getattr(value, "__module__", None) == module.__name__
            )
            listing = f" (it defines: {', '.join(defined)})" if defined else ""
            raise ConfigError(f"reward {name!r}: {where} has no function {attr!r}{listing}")
        obj = getattr(obj, part)
    if not callable(obj):
        kind = type(obj).__name__
        raise ConfigError(f"reward {name!r}: {attr!r} in {where} is not a function but a value of type {kind}")
    return obj


# ----------------------------------------------------------------------------------------------------- scoring
