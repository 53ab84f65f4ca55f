"""Rewards for tool-using rollouts (tunekit/rl/tool_rollout.py), which pass the trajectory's columns beside the data's:
``final_response`` (the last assistant turn), ``tool_calls`` (the calls made) and ``tool_cost``.

Loaded by path, like reward_models/math.py: ``reward_models/tools.py:final_answer_correct``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def _math() -> Any:
    spec = importlib.util.spec_from_file_location("tunekit_reward_tools_math", Path(__file__).with_name("math.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_final_answer = _math().final_answer


def final_answer_correct(
    prompts: list[str],
    completions: list[str],
    answer: list[Any],
    final_response: list[str] | None = None,
    **columns: Any,
) -> list[float]:
    """1.0 where the final answer of the last assistant turn (``final_response``; the completion itself in a rollout
    without tools) equals the row's ``answer``, else 0.0. A number the model only read in a tool's answer and never
    wrote in its reply does not count."""
    replies = final_response if final_response is not None else completions
    return [
        1.0 if _final_answer(reply) == _final_answer(str(ref)) else 0.0
        for reply, ref in zip(replies, answer, strict=True)
    ]


def call_cost(
    prompts: list[str], completions: list[str], tool_cost: list[float] | None = None, **columns: Any
) -> list[float]:
    """Minus the summed ``cost`` of the tools each completion called (tools.use[].cost); 0 without tools."""
    return [-float(c) for c in tool_cost] if tool_cost is not None else [0.0] * len(completions)
