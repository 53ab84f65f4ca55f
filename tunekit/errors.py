"""User-facing errors and the one place that turns them into a clean exit.

A ``UserError`` is a mistake in what the user gave us (config, data, paths), not a bug. Recipes run their
``main`` under :func:`exit_on_user_error`, which prints the message as one paragraph and exits with code 2
instead of showing a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

USER_ERROR_EXIT_CODE = 2

T = TypeVar("T")


class UserError(Exception):
    """Something the user asked for cannot be done; the message says what and where."""


class ConfigError(UserError):
    """A config key is unknown or has a value of the wrong type."""


class InvalidValue(ValueError):
    """A config section's own check failed (raised from its ``__post_init__``).

    ``key`` is the field at fault relative to the section (``"lr"`` in ``train``); the config loader prefixes the
    section's path, so the user reads ``train.lr must be positive, got -1.0``. A ValueError rather than a
    UserError, so that code building a section by hand (tests, library users) gets an ordinary ValueError.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key} {message}")
        self.key = key
        self.message = message


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`InvalidValue` for ``key`` unless ``condition`` holds: the one style of a section's checks."""
    if not condition:
        raise InvalidValue(key, message)


class DataError(UserError):
    """A data file, row or column is malformed or missing."""


class ModelError(UserError):
    """A model path, adapter target or quantisation request cannot be honoured."""


def exit_on_user_error(main: Callable[[], T]) -> T:
    """Run ``main``; on a :class:`UserError` print ``error: <message>`` to stderr and exit with code 2."""
    try:
        return main()
    except UserError as err:
        print(f"tunekit error: {err}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
