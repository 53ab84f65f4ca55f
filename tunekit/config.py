"""Typed configs: YAML files plus dotted ``key.sub=value`` overrides, checked against dataclasses.

Each recipe declares its config as a tree of dataclasses. :func:`load_config` reads an optional YAML file,
applies overrides from the command line, and builds the dataclass tree. Unknown keys are errors that suggest
the closest valid key, and values of the wrong type are errors that name the key and the expected type, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from tunekit.errors import ConfigError, InvalidValue

C = TypeVar("C")

# Keys that moved, and where to: a config written for an earlier tunekit gets the new key, not a near-miss guess.
MOVED_KEYS = {"data.padding_free": "model.fast_paths.padding_free"}


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build ``cls`` from an optional YAML file and ``key.sub=value`` overrides (applied in order, last wins)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}")
        raw = loaded or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        _set_dotted(raw, key.strip(), Override(value))
    return from_dict(cls, raw)


class Override:
    """A command-line value, kept as typed: a text key takes the text itself, any other key the value YAML reads
    from it. So ``model.revision=1.10`` stays "1.10" (YAML would read 1.1), and ``data.prompt_template=Q: {prompt}
    #### A:`` keeps what follows the "#" (YAML would drop it as a comment)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parsed = _parse_scalar(text)

    def for_text(self, or_collection: bool) -> Any:
        """The value for a key that holds text: the text as given, unless YAML reads it as null or a quoted
        string, or (``or_collection``: a key typed e.g. ``str | list[str]``) as a list or a mapping."""
        quoted = isinstance(self.parsed, str) and self.text.strip()[:1] in ("'", '"')
        if self.parsed is None or quoted or (or_collection and isinstance(self.parsed, list | dict)):
            return self.parsed
        return self.text.strip()


def from_dict(cls: type[C], raw: dict[str, Any], prefix: str = "", base: C | None = None) -> C:
    """Build dataclass ``cls`` from a nested dict, checking every key and value type.

    Keys not given keep their values in ``base`` (default: ``cls()``), so overriding one key of a section keeps
    the recipe's own defaults for the rest of that section.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    base = cls() if base is None else base
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            if prefix + str(key) in MOVED_KEYS:
                raise ConfigError(f"config key {prefix}{key!s} is now {MOVED_KEYS[prefix + str(key)]}")
            raise ConfigError(_unknown_key_message(prefix + str(key), list(fields), prefix))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = value.parsed if isinstance(value, Override) else value
            # A whole section given as null keeps the recipe's own values for it, as an omitted one does.
            section = {} if value is None else value
            kwargs[key] = from_dict(hint, section, prefix=f"{prefix}{key}.", base=getattr(base, key))  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, hint, prefix + key)
    try:
        return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
    except InvalidValue as err:  # a section's own checks (__post_init__), naming its field
        raise ConfigError(f"{prefix}{err.key} {err.message}") from None
    except ValueError as err:  # older-style checks that name no field
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts, ready for YAML."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, for docs and error messages."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, f"{prefix}{f.name}."))  # type: ignore[arg-type]
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key_message(key: str, valid: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1, cutoff=0.5)
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    return f"unknown config key {key!r}{hint} (valid keys here: {', '.join(prefix + v for v in valid)})"


def _parse_scalar(text: str) -> Any:
    """Parse an override's value the way YAML would (``1e-4`` -> float, ``true`` -> bool, ``[a,b]`` -> list)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(value, Override):
        if hint is str:
            value = value.for_text(or_collection=False)
        elif origin in (Union, types.UnionType) and str in typing.get_args(hint):
            collections = any(typing.get_origin(a) in (list, dict) or a in (list, dict) for a in typing.get_args(hint))
            value = value.for_text(or_collection=collections)
        else:
            value = value.parsed
    if dataclasses.is_dataclass(hint):
        if value is None:
            return hint()  # type: ignore[operator]
        return from_dict(hint, value, prefix=key + ".")  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:  # an optional value: the one type's own message says the most
            raise ConfigError(errors[0])
        expected = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"config key {key!r} expects {expected}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint_text = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key {key!r} must be {_type_name(hint)}, got {value!r}{hint_text}")
        return value
    if origin in (list, tuple):
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        return [_coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; it is plainly meant as a number.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and number == number:  # NaN is no setting: it would poison every step it touches
            return number
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a numeric hub revision or name; YAML read it as a number
        if isinstance(value, float):
            raise ConfigError(
                f"config key {key!r} holds text, but YAML read {value!r} as a number, which may not be what was "
                f'written (1.10 reads as 1.1); quote it: {key.rsplit(".", 1)[-1]}: "..."'
            )
    else:
        raise TypeError(f"config key {key!r} has a type tunekit cannot check: {hint!r}")
    raise ConfigError(f"config key {key!r} expects {_type_name(hint)}, got {value!r} ({type(value).__name__})")
