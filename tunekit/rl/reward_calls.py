"""Calling reward functions: their signatures checked against the data before a run starts, a batch scored with
every source of a config, and a failure named by function and completion (the contract: :mod:`tunekit.rl.rewards`).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tunekit.data.prompts import PromptExample
from tunekit.errors import ConfigError, DataError
from tunekit.rl.rewards import RewardFn, RewardFunctionError, RewardSource

_SHOW_CHARS = 80  # how much of a prompt or completion an error message quotes


def check_reward_columns(sources: Sequence[tuple[RewardSource, RewardFn]], columns: list[str]) -> None:
    """Refuse, before any model is loaded, a reward function that cannot take the data's ``columns`` (say
    ``math_correct``, which needs ``answer``, on rows without one); the error names the function and the columns."""
    for source, fn in sources:
        check_signature(source.name, fn, [*columns, *source.kwargs])


def check_reward_rows(sources: Sequence[tuple[RewardSource, RewardFn]], prompts: Sequence[PromptExample]) -> None:
    """:func:`check_reward_columns` for every row's columns, before anything is written: a row that lacks a column
    the others have (an ``answer`` missing on one line) is named, file and line, rather than found when sampled."""
    first_of_each: dict[tuple[str, ...], PromptExample] = {}
    for prompt in prompts:
        first_of_each.setdefault(tuple(sorted(prompt.columns)), prompt)
    for columns, first in first_of_each.items():
        try:
            check_reward_columns(sources, list(columns))
        except RewardFunctionError as err:
            if len(first_of_each) == 1:  # no row has the column: the function or the data as a whole is at fault
                raise
            raise DataError(
                f"{first.where or f'row {first.index}'} lacks what a reward function needs: {err}"
            ) from None


def compute_rewards(
    sources: Sequence[tuple[RewardSource, RewardFn]],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score N completions with every source and combine them.

    prompts, completions: [N]; columns: name -> [N] values, the data row of each completion (for GRPO, each
    prompt's row repeated once per completion). Each function is called once for the whole batch as
    ``fn(prompts=..., completions=..., **columns, **source.kwargs)``; a config option wins over a data column of
    the same name.

    Returns ``(total [N] float32, {key: reward [N] float32})``: the total is sum(weight * reward); the per-source
    tensors are the functions' raw, unweighted values (so a logged ``math_correct`` mean is an accuracy). Keys are
    the source names; a name listed twice (say two ``format`` entries with different patterns) gets ``#2``,
    ``#3``, ... appended to its later entries.
    """
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} completions; repeat each prompt once per completion")
    for column, values in columns.items():
        if len(values) != n:
            raise ValueError(f"data column {column!r} has {len(values)} values for {n} completions")
    total = torch.zeros(n, dtype=torch.float32)
    per_source: dict[str, torch.Tensor] = {}
    for source, fn in sources:
        rewards = _score(source, fn, prompts, completions, columns)
        per_source[_unique_key(source.name, per_source)] = rewards
        total += float(source.weight) * rewards
    return total, per_source


def _unique_key(name: str, taken: dict[str, Any]) -> str:
    key, k = name, 1
    while key in taken:
        k += 1
        key = f"{name}#{k}"
    return key


def _score(
    source: RewardSource, fn: RewardFn, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]
) -> torch.Tensor:
    """One source on the batch -> [N] float32, or a RewardFunctionError that says what went wrong and where."""
    name = source.name
    reserved = {"prompts", "completions"} & set(source.kwargs)
    if reserved:
        raise ConfigError(f"reward {name!r}: kwargs may not set {', '.join(sorted(reserved))}; tunekit passes those")
    options = dict(source.kwargs)

    def call(lo: int, hi: int) -> Any:
        data = {column: values[lo:hi] for column, values in columns.items()}
        return fn(**{**data, **options}, prompts=prompts[lo:hi], completions=completions[lo:hi])

    check_signature(name, fn, [*columns, *options])
    n = len(completions)
    try:
        result = call(0, n)
    except Exception as batch_err:
        # The error carries the exception of the call it blames as its cause, for a traceback that shows the line.
        raise _locate_failure(name, call, prompts, completions, batch_err)  # noqa: B904
    return _as_rewards(name, result, n)


def check_signature(name: str, fn: RewardFn, keywords: list[str]) -> None:
    """Catch a function that cannot take the batch's keywords before calling it.

    Without this, a function written without ``**columns`` fails with "unexpected keyword argument 'answer'" on
    every completion, and the per-completion search below would blame completion 0 for a problem of the function.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C functions have no signature to check
        return
    try:
        signature.bind(prompts=[], completions=[], **dict.fromkeys(keywords))
    except TypeError as err:
        passed = ", ".join(["prompts", "completions", *keywords])
        if "missing a required argument" in str(err):
            raise RewardFunctionError(
                f"reward function {name!r} needs an argument the data does not give ({err}); it is called with "
                f"{passed}. Add that column to the data, set it in the reward's kwargs, or choose another reward"
            ) from None
        raise RewardFunctionError(
            f"reward function {name!r} cannot be called with the keyword arguments it is given ({passed}): {err}. "
            "A reward function is called as fn(prompts=..., completions=..., **columns, **kwargs); give it a "
            "**columns parameter to accept the data columns it does not use"
        ) from None


def _locate_failure(
    name: str, call: Callable[[int, int], Any], prompts: list[str], completions: list[str], batch_err: Exception
) -> RewardFunctionError:
    """Re-score one completion at a time to find the first that makes the function raise.

    Only runs after the batch call failed, so the extra calls cost nothing on the normal path. If no single
    completion fails (the function breaks only on a whole batch), the batch's own exception is reported.
    """
    n = len(completions)
    if n == 1:
        return _raised_at(name, 0, n, prompts, completions, batch_err)
    for i in range(n):
        try:
            call(i, i + 1)
        except Exception as err:
            return _raised_at(name, i, n, prompts, completions, err)
    error = RewardFunctionError(
        f"reward function {name!r} raised {type(batch_err).__name__}: {batch_err} when scoring a batch of {n} "
        "completions, though it scores each of them alone without error"
    )
    error.__cause__ = batch_err
    return error


def _raised_at(
    name: str, i: int, n: int, prompts: list[str], completions: list[str], err: Exception
) -> RewardFunctionError:
    error = RewardFunctionError(
        f"reward function {name!r} raised {type(err).__name__}: {err} while scoring completion {i} of {n} "
        f"(prompt {_short(prompts[i])}, completion {_short(completions[i])})"
    )
    error.__cause__ = err
    return error


def _short(text: str) -> str:
    text = str(text)
    return repr(text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "...")


def _as_rewards(name: str, result: Any, n: int) -> torch.Tensor:
    """A function's return value -> [N] float32, refusing anything but N finite real numbers."""
    if isinstance(result, torch.Tensor) or hasattr(result, "__array__"):  # a tensor or a numpy array
        if getattr(result, "ndim", None) != 1:
            raise RewardFunctionError(
                f"reward function {name!r} returned an array of shape {tuple(result.shape)}; it must return one "
                f"float per completion ({n})"
            )
        result = result.tolist()
    if not isinstance(result, list | tuple):
        raise RewardFunctionError(
            f"reward function {name!r} returned {_type_of(result)} instead of a list of {n} floats (one per completion)"
        )
    if len(result) != n:
        raise RewardFunctionError(
            f"reward function {name!r} returned {len(result)} values for {n} completions; it must return one float "
            "per completion"
        )
    values = []
    for i, value in enumerate(result):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, numbers.Real):  # bools are accepted: True scores 1.0
            raise RewardFunctionError(
                f"reward function {name!r} returned a non-number at index {i}: {value!r} ({_type_of(value)}); "
                "it must return one float per completion"
            )
        values.append(float(value))
    rewards = torch.tensor(values, dtype=torch.float32)
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(f"{values[i]} at index {i}" for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise RewardFunctionError(
            f"reward function {name!r} returned non-finite rewards ({shown}); rewards must be finite numbers"
        )
    return rewards


def _type_of(value: Any) -> str:
    return "None" if value is None else type(value).__name__
