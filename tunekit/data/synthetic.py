"""The embedded default datasets: small, generated from a seed, with a checkable right answer.

Every recipe's default config runs offline on these, so a fresh install can train end to end without any
download. The tasks are deliberately easy (one- and two-digit arithmetic written out in words and symbols)
so that a tiny randomly initialised model visibly learns them within a minute or two on a CPU.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}
_NAMES = ["Ada", "Ben", "Cai", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
_THINGS = ["apples", "books", "coins", "pens", "shells", "stamps", "cards", "eggs"]
# One question in this many is reserved for held-out sets: training rows never contain it, held-out rows contain
# nothing else. Without the reservation a held-out draw repeats a training prompt word for word about a third of
# the time (the "What is a + b?" form has only 155 variants), and held-out scores partly measure memory.
HELD_OUT_SHARE = 5

Split = Literal["train", "held_out", "all"]
# What a recipe takes as its generated data: (n, seed, split) -> n rows.
Generator = Callable[[int, int, Split], list[dict[str, Any]]]


def is_held_out(question: str) -> bool:
    """Whether ``question`` belongs to the reserved held-out part of the generated problem space."""
    return zlib.crc32(question.encode()) % HELD_OUT_SHARE == 0


def _problems(rng: random.Random, max_operand: int, split: Split) -> Iterator[tuple[str, int, str]]:
    """Endless arithmetic problems of ``split``: draws of the other split are skipped, so a train split's rows are
    the same draws, in the same order, as the unsplit stream's with the reserved ones left out."""
    while True:
        problem = _problem(rng, max_operand)
        if split == "all" or is_held_out(problem[0]) == (split == "held_out"):
            yield problem


def _problem(rng: random.Random, max_operand: int) -> tuple[str, int, str]:
    """One arithmetic question, its integer answer and a worked answer line."""
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    op = rng.choice(list(_OPS))
    if op == "-" and b > a:
        a, b = b, a
    result = _OPS[op](a, b)
    if rng.random() < 0.5:
        question = f"What is {a} {op} {b}?"
    else:
        name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
        verb = "gets" if op == "+" else "gives away"
        question = f"{name} has {a} {thing} and {verb} {b}. How many {thing} now?"
    return question, result, f"{a} {op} {b} = {result}"


def sft_examples(n: int, seed: int = 0, split: Split = "train", max_operand: int = 9) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt": "Question: ...\\nAnswer:", "completion": " 3 + 4 = 7. #### 7"}``."""
    problems = _problems(random.Random(seed), max_operand, split)
    rows = []
    for _ in range(n):
        question, result, work = next(problems)
        rows.append({"prompt": f"Question: {question}\nAnswer:", "completion": f" {work}. #### {result}"})
    return rows


def preference_pairs(n: int, seed: int = 0, split: Split = "train", max_operand: int = 9) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt", "chosen", "rejected"}``: a right final answer against a wrong one.

    Both responses show the same correct working; the rejected one then states a different final answer after
    "####". Spotting that mismatch is within reach of the embedded tiny model in a minute of training, where
    verifying the sum itself from pairwise feedback alone is not (measured: about 60-70% held-out accuracy).
    """
    rng = random.Random(seed)
    problems = _problems(rng, max_operand, split)
    rows = []
    for _ in range(n):
        question, result, work = next(problems)
        wrong = result + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append(
            {
                "prompt": f"Question: {question}\nAnswer:",
                "chosen": f" {work}. #### {result}",
                "rejected": f" {work}. #### {wrong}",
            }
        )
    return rows


def prompts_with_answers(n: int, seed: int = 0, split: Split = "train", max_operand: int = 9) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt", "answer"}`` for reinforcement learning with a verifiable reward."""
    problems = _problems(random.Random(seed), max_operand, split)
    return [{"prompt": f"Question: {q}\nAnswer:", "answer": str(r)} for q, r, _ in (next(problems) for _ in range(n))]


def text_corpus(n: int, seed: int = 0, split: Split = "train") -> list[dict[str, Any]]:
    """``n`` rows ``{"text": ...}`` of short generated prose and sums, for continued pre-training."""
    rng = random.Random(seed)
    problems = _problems(rng, 20, split)
    rows = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            question, result, work = next(problems)
            name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
            sentences.append(
                rng.choice(
                    [
                        f"{name} counted {result} {thing}.",
                        f"We know that {work}.",
                        f"{question} The answer is {result}.",
                        f"{name} likes {thing} more than {rng.choice(_THINGS)}.",
                    ]
                )
            )
        rows.append({"text": " ".join(sentences)})
    return rows


# ------------------------------------------------------------------------------ arithmetic too big to do unaided
# Two-digit sums, differences and products: beyond the arithmetic the embedded tiny model can do itself, within
# reach of copying the numbers into a calculator call and its answer into the reply (docs/tools.md).
BIG_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _big_problems(rng: random.Random, split: Split) -> Iterator[tuple[str, str, int]]:
    """Endless (question, expression, answer) of ``split`` (held-out questions reserved as in :func:`_problems`)."""
    while True:
        op = rng.choice(list(BIG_OPS))
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and b > a:
            a, b = b, a
        # Written without spaces, so that every number is its digits wherever it stands: the tiny tokenizer merges
        # " 10" to " 40" into single tokens, and "(97 - 37)" put a rare token where "(97 - 73)" puts two digits.
        # Copying digits into the call and back into the reply is the plain induction a small model learns early;
        # copying rare merged tokens it does not learn (docs/results.md, tool use).
        expression = f"{a}{op}{b}"
        question = f"What is ({expression})?"
        if split == "all" or is_held_out(question) == (split == "held_out"):
            yield question, expression, BIG_OPS[op](a, b)


def big_arithmetic_answers(n: int, seed: int = 0, split: Split = "train") -> list[dict[str, Any]]:
    """``n`` chat rows answering directly: ``{"messages": [user, assistant "####81"]}``."""
    problems = _big_problems(random.Random(seed), split)
    rows = []
    for _ in range(n):
        question, _, answer = next(problems)
        rows.append({"messages": [{"role": "user", "content": question}, _reply(answer)]})
    return rows


def big_arithmetic_tool_transcripts(
    n: int, seed: int = 0, split: Split = "train", tool_share: float = 1.0
) -> list[dict[str, Any]]:
    """``n`` chat rows that call the calculator, read its answer and reply: user, assistant tool call, tool, assistant.
    With ``tool_share`` < 1, each row calls with that probability and otherwise answers at once ("####<answer>", a
    right answer the tiny model cannot work out itself): a warm start that sometimes uses the tool, for RL to learn
    when to. The tool's schema is the config's to give (data.tools: [calculator])."""
    rng = random.Random(seed)
    problems = _big_problems(rng, split)
    rows = []
    for _ in range(n):
        question, expression, answer = next(problems)
        if rng.random() >= tool_share:
            rows.append({"messages": [{"role": "user", "content": question}, _reply(answer)]})
            continue
        call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "calculator", "content": str(answer)},
            _reply(answer),
        ]
        rows.append({"messages": messages})
    return rows


def big_arithmetic_half_tool_transcripts(n: int, seed: int = 0, split: Split = "train") -> list[dict[str, Any]]:
    """:func:`big_arithmetic_tool_transcripts` with every other row, on average, answering without the tool."""
    return big_arithmetic_tool_transcripts(n, seed, split, tool_share=0.5)


def _reply(answer: int) -> dict[str, str]:
    return {"role": "assistant", "content": f"####{answer}"}


def big_arithmetic_prompts(n: int, seed: int = 0, split: Split = "train") -> list[dict[str, Any]]:
    """``n`` RL rows ``{"prompt": [user message], "answer"}`` of the same problems."""
    problems = _big_problems(random.Random(seed), split)
    return [
        {"prompt": [{"role": "user", "content": q}], "answer": str(r)} for q, _, r in (next(problems) for _ in range(n))
    ]


# data.path "synthetic:<task>": a generated task other than the recipe's default, by the kind of rows the recipe reads.
SYNTHETIC_TASKS: dict[str, dict[str, Generator]] = {
    "big-arithmetic": {"sft": big_arithmetic_answers, "prompts": big_arithmetic_prompts},
    "big-arithmetic-tools": {"sft": big_arithmetic_tool_transcripts, "prompts": big_arithmetic_prompts},
    "big-arithmetic-tools-half": {"sft": big_arithmetic_half_tool_transcripts, "prompts": big_arithmetic_prompts},
}


def is_synthetic(path: str) -> bool:
    return path == "synthetic" or path.startswith("synthetic:")


def generator_for(path: str, default: Generator) -> Generator:
    """The generator data.path names: ``default`` (the recipe's own) for "synthetic", or the task's rows of the same
    kind for "synthetic:<task>"; an error naming the tasks otherwise."""
    from tunekit.errors import ConfigError

    if path == "synthetic":
        return default
    name = path.partition(":")[2]
    if name not in SYNTHETIC_TASKS:
        raise ConfigError(f"data.path {path!r}: no generated task {name!r}; known: {', '.join(SYNTHETIC_TASKS)}")
    kind = {sft_examples: "sft", prompts_with_answers: "prompts"}.get(default)  # type: ignore[arg-type]
    if kind not in SYNTHETIC_TASKS[name]:
        raise ConfigError(
            f"data.path {path!r}: the task has no rows for this recipe (it has: {', '.join(SYNTHETIC_TASKS[name])})"
        )
    return SYNTHETIC_TASKS[name][kind]
