"""The built-in tools: a calculator that reads arithmetic with ``ast`` (no ``eval``) and a Python executor.

Both follow the tool contract: a plain function with type hints and a Google-style docstring, from which
``transformers.utils.get_json_schema`` writes the JSON schema the chat template shows the model. A tool returns
text (or anything ``str`` turns into text); a tool that returns None answers with what it printed.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

# Limits that keep one calculator call small whatever it is given: 9 ** 9 ** 9 would otherwise take minutes and
# gigabytes before the sandbox's limits stopped it.
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_DIGITS = 64

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression of numbers, + - * / // % ** and parentheses.

    Args:
        expression: The expression to evaluate, for example "4821 + 3957" or "12 * (3 + 4)".
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


def _evaluate(node: ast.AST) -> int | float:
    """The value of one node of an arithmetic expression; anything but numbers and the operators above is refused."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponents above {MAX_EXPONENT} are not computed")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        if isinstance(value, int) and len(str(abs(value))) > MAX_DIGITS:
            raise ValueError(f"the result has more than {MAX_DIGITS} digits")
        return value
    raise ValueError(f"only numbers and + - * / // % ** are allowed, not {ast.unparse(node)!r}")


def python(code: str) -> None:
    """Run Python code and answer with what it prints.

    Args:
        code: The Python program to run; print what you want to see.
    """
    # Runs inside the sandbox's worker process (tunekit/tools/worker.py), whose stdout is the tool's answer.
    exec(compile(code, "<tool:python>", "exec"), {"__name__": "__main__"})  # noqa: S102 - the sandbox's purpose


BUILTIN_TOOLS: dict[str, Callable[..., Any]] = {"calculator": calculator, "python": python}
# Built-ins safe to call in the training process itself (pure, bounded above): no subprocess per call.
IN_PROCESS_SAFE = frozenset({"calculator"})
