"""Reward functions: the built-in checkers on real GSM8K answers, loading by name / file / import path, weighting,
and the error messages a user sees when a config or a reward function is wrong."""

from __future__ import annotations

import json
import math
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tunekit.errors import ConfigError, UserError
from tunekit.rl.reward_calls import compute_rewards
from tunekit.rl.rewards import (
    BUILTIN_REWARDS,
    REPO_ROOT,
    RewardFunctionError,
    RewardSource,
    load_reward_function,
    load_reward_sources,
)

final_answer = load_reward_function("reward_models/math.py:final_answer")


@pytest.fixture(scope="module")
def gsm8k_rows(shared_data: Path) -> list[dict[str, str]]:
    with open(shared_data / "gsm8k" / "test.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 1319
    return rows


def _alter_final_number(solution: str) -> str:
    """The same solution with the number after '####' changed by one."""
    head, marker, tail = solution.rpartition("#### ")
    number = int(tail.strip().replace(",", ""))
    return f"{head}{marker}{number + 1}"


# ------------------------------------------------------------------------------------------------ the built-ins


def test_math_correct_on_real_gsm8k_answers(gsm8k_rows):
    math_correct = load_reward_function("math_correct")
    prompts = [row["question"] for row in gsm8k_rows]
    answers = [row["answer"] for row in gsm8k_rows]
    bare = [a.rpartition("####")[2].strip() for a in answers]  # "18", "1,600", "-3": as some datasets hold it
    assert any("," in b for b in bare) and any(b.startswith("-") for b in bare)  # the hard cases are in the data

    # The reference solution scores 1 against itself, against its bare final number, and against that number with
    # commas stripped; a solution whose final number is off by one scores 0.
    assert math_correct(prompts, answers, answer=answers) == [1.0] * len(answers)
    assert math_correct(prompts, answers, answer=bare) == [1.0] * len(answers)
    assert math_correct(prompts, answers, answer=[b.replace(",", "") for b in bare]) == [1.0] * len(answers)
    altered = [_alter_final_number(a) for a in answers]
    assert math_correct(prompts, altered, answer=answers) == [0.0] * len(answers)


def test_math_correct_reads_free_form_completions(gsm8k_rows):
    math_correct = load_reward_function("math_correct")
    row = gsm8k_rows[0]  # Janet's ducks: "#### 18"
    completions = [
        "She sells 9 eggs at $2 each, so she makes $18.",
        "9 * 2 = 18.00 dollars",
        "She makes 18 dollars, 9 eggs at 2.",  # the last number is 2: wrong
        "#### 18\n",
        "I am not sure.",
    ]
    n = len(completions)
    assert math_correct([row["question"]] * n, completions, answer=[row["answer"]] * n) == [1.0, 1.0, 0.0, 1.0, 0.0]
    # Extra data columns are ignored.
    assert math_correct(["q"], ["#### 7"], answer=["7"], question=["q"], id=[3]) == [1.0]
    # A reference with no number is a data error, not a wrong completion.
    with pytest.raises(ValueError, match="no number"):
        math_correct(["q"], ["#### 7"], answer=["seven"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the total is 1,234 apples", "1234"),
        ("#### 1,450,000", "1450000"),
        ("#### 1,2345", "1"),  # malformed grouping: never a well-formed "1,234" cut out of a longer digit run
        ("The temperature drops to -7 degrees.", "-7"),
        ("x = -3.", "-3"),
        ("10 - 3 = 7", "7"),
        ("between 3-5 hours", "5"),  # a range, not minus five
        ("It costs $10.", "10"),
        ("She owes -$5", "-5"),
        ("half is 0.5", "0.5"),
        ("about .25 of it", "0.25"),
        ("10.0", "10"),
        ("10.50", "10.5"),
        ("-0", "0"),
        ("The answer is 42.", "42"),
        ("first 12 then 13 #### 14 and later 15", "14"),  # the number right after the last ####
        ("#### 3\n#### 4", "4"),
        ("12 eggs\n#### no idea", None),  # a marker with no number does not fall back to the working
        ("no number here", None),
        ("", None),
    ],
)
def test_final_answer_edge_cases(text, expected):
    assert final_answer(text) == expected


def test_format_and_length_penalty():
    fmt = load_reward_function("format")
    completions = ["work\n#### 18", "work\n#### -1,600\n", "#### 18 dollars", "the answer is 18"]
    assert fmt(["p"] * 4, completions) == [1.0, 1.0, 0.0, 0.0]
    assert fmt(["p"] * 4, completions, pattern=r"answer is \d+") == [0.0, 0.0, 0.0, 1.0]

    penalty = load_reward_function("length_penalty")
    lengths = [0, 10, 11, 15, 20, 25, 1000]
    got = penalty(["p"] * len(lengths), ["x" * k for k in lengths], target_chars=10)
    assert got == pytest.approx([0.0, 0.0, -0.1, -0.5, -1.0, -1.0, -1.0])
    with pytest.raises(ValueError, match="target_chars"):
        penalty(["p"], ["x"], target_chars=0)


# ------------------------------------------------------------------------------------------------------ loading


def test_builtins_load_by_name_and_by_path_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # built-ins and repo-relative paths still resolve: they fall back to the repo root
    by_name = load_reward_function("math_correct")
    by_path = load_reward_function("reward_models/math.py:math_correct")
    assert by_name is by_path  # one module per file per process
    assert by_name.__name__ == "math_correct"
    for name, target in BUILTIN_REWARDS.items():
        file_part, _, function = target.rpartition(":")
        assert (REPO_ROOT / file_part).is_file()
        assert load_reward_function(name).__name__ == function
    # The file is loaded under a private name: the standard library's math is untouched.
    assert sys.modules["math"] is math and math.sqrt(4.0) == 2.0


def test_relative_paths_prefer_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "reward_models").mkdir()
    (tmp_path / "reward_models" / "math.py").write_text("def math_correct(prompts, completions, **c):\n    return []\n")
    monkeypatch.chdir(tmp_path)
    local = load_reward_function("reward_models/math.py:math_correct")
    assert Path(local.__code__.co_filename) == (tmp_path / "reward_models" / "math.py").resolve()
    # A built-in name always means the shipped function.
    assert Path(load_reward_function("math_correct").__code__.co_filename) == REPO_ROOT / "reward_models" / "math.py"


def test_load_by_dotted_path_and_absolute_file(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        textwrap.dedent(
            """
            def exclaims(prompts, completions, **columns):
                return [float(c.endswith("!")) for c in completions]

            class Scorer:
                @staticmethod
                def score(prompts, completions, **columns):
                    return [0.0] * len(completions)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("my_rewards_mod:exclaims", "my_rewards_mod.exclaims"):
        assert load_reward_function(name)(["p", "p"], ["hi!", "hi"]) == [1.0, 0.0]
    assert load_reward_function("my_rewards_mod:Scorer.score")(["p"], ["x"]) == [0.0]
    assert load_reward_function(f"{tmp_path / 'my_rewards_mod.py'}:exclaims")(["p"], ["!"]) == [1.0]


def test_unknown_builtin_lists_the_valid_names():
    with pytest.raises(ConfigError) as err:
        load_reward_function("math_corect")
    message = str(err.value)
    assert "'math_corect'" in message
    for name in BUILTIN_REWARDS:
        assert name in message
    with pytest.raises(ConfigError, match="needs a name"):
        load_reward_function("")


def test_missing_file_function_module_and_non_callable_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"file reward_models/nope\.py not found"):
        load_reward_function("reward_models/nope.py:score")
    with pytest.raises(ConfigError, match=r"has no function 'math_corect' \(it defines: final_answer, math_correct\)"):
        load_reward_function("reward_models/math.py:math_corect")
    with pytest.raises(ConfigError, match="names a file but no function"):
        load_reward_function("reward_models/math.py")
    with pytest.raises(ConfigError, match="no module named 'no_such_pkg_xyz.rewards'"):
        load_reward_function("no_such_pkg_xyz.rewards:score")

    (tmp_path / "odd.py").write_text("THRESHOLD = 3\n")
    with pytest.raises(ConfigError, match="'THRESHOLD' in .*odd.py is not a function but a value of type int"):
        load_reward_function("odd.py:THRESHOLD")
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match="loading .*broken.py raised SyntaxError"):
        load_reward_function("broken.py:f")


def test_builtin_missing_from_the_repo_says_a_checkout_is_needed(tmp_path):
    with pytest.raises(ConfigError, match="source tree"):
        load_reward_function("format", repo_root=tmp_path)


# ------------------------------------------------------------------------------------------------------ scoring


def test_compute_rewards_weights_and_passes_columns_and_kwargs():
    sources = load_reward_sources(
        [
            RewardSource("math_correct", weight=2.0),
            RewardSource("format", weight=0.5),
            RewardSource("format", weight=-1.0, kwargs={"pattern": r"^I think"}),
        ]
    )
    completions = ["I think\n#### 4", "#### 5", "I think it is 4", "no"]
    total, per_source = compute_rewards(
        sources, ["2+2?"] * 4, completions, columns={"answer": ["4"] * 4, "question": ["2+2?"] * 4}
    )
    assert list(per_source) == ["math_correct", "format", "format#2"]  # a repeated name gets a suffix
    assert per_source["math_correct"].tolist() == [1.0, 0.0, 1.0, 0.0]  # raw, unweighted
    assert per_source["format"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert per_source["format#2"].tolist() == [1.0, 0.0, 1.0, 0.0]
    # 2 * math + 0.5 * format - 1 * format#2
    assert total.tolist() == [1.5, 0.5, 1.0, 0.0]
    assert total.dtype == torch.float32 and total.shape == (4,)
    for rewards in per_source.values():
        assert rewards.dtype == torch.float32 and rewards.shape == (4,)


def test_compute_rewards_accepts_tensors_bools_and_empty_batches():
    def as_tensor(prompts, completions, **columns):
        return torch.tensor([len(c) for c in completions], dtype=torch.float64)

    def as_bools(prompts, completions, **columns):
        return [c == "a" for c in completions]

    sources = [(RewardSource("t", weight=1.0), as_tensor), (RewardSource("b", weight=3.0), as_bools)]
    total, _ = compute_rewards(sources, ["p", "p"], ["a", "bb"], {})
    assert total.tolist() == [4.0, 2.0]
    total, per_source = compute_rewards(sources, [], [], {})
    assert total.shape == (0,) and per_source["b"].shape == (0,)


def _fail_on_seven(prompts, completions, **columns):
    return [1.0 / (len(c) - 7) for c in completions]  # ZeroDivisionError on a completion of 7 characters


def _one_value(prompts, completions, **columns):
    return [1.0]


def _nan_at_two(prompts, completions, **columns):
    return [float("nan") if i == 2 else 0.0 for i in range(len(completions))]


def _returns_none(prompts, completions, **columns):
    return None


def _returns_strings(prompts, completions, **columns):
    return ["1.0" for _ in completions]


def _no_columns(prompts, completions):
    return [0.0 for _ in completions]


def _batch_only_failure(prompts, completions, **columns):
    if len(completions) > 1:
        raise RuntimeError("batch too big")
    return [0.0]


@pytest.mark.parametrize(
    ("fn", "pattern"),
    [
        (
            _fail_on_seven,
            r"reward function 'fails' raised ZeroDivisionError: .* while scoring completion 2 of 4 "
            r"\(prompt 'prompt 2', completion 'seven!!'\)",
        ),
        (_one_value, r"reward function 'fails' returned 1 values for 4 completions"),
        (_nan_at_two, r"reward function 'fails' returned non-finite rewards \(nan at index 2\)"),
        (_returns_none, r"reward function 'fails' returned None instead of a list of 4 floats"),
        (_returns_strings, r"reward function 'fails' returned a non-number at index 0: '1.0' \(str\)"),
        (_no_columns, r"reward function 'fails' cannot be called .*unexpected keyword argument 'answer'.*\*\*columns"),
        (_batch_only_failure, r"raised RuntimeError: batch too big when scoring a batch of 4 completions"),
    ],
)
def test_reward_function_failures_name_the_function(fn, pattern):
    completions = ["a", "bb", "seven!!", "dddd"]
    with pytest.raises(RewardFunctionError, match=pattern) as err:
        compute_rewards(
            [(RewardSource("fails"), fn)], [f"prompt {i}" for i in range(4)], completions, {"answer": ["1"] * 4}
        )
    assert isinstance(err.value, UserError)  # recipes turn it into a clean exit, not a traceback


def test_a_raising_builtin_blames_the_bad_row():
    math_correct = load_reward_function("math_correct")
    with pytest.raises(RewardFunctionError, match=re.escape("completion 1 of 3")) as err:
        compute_rewards(
            [(RewardSource("math_correct"), math_correct)], ["q"] * 3, ["#### 1"] * 3, {"answer": ["1", "??", "3"]}
        )
    assert isinstance(err.value.__cause__, ValueError)


def test_kwargs_may_not_override_prompts_or_completions():
    with pytest.raises(ConfigError, match="may not set completions"):
        compute_rewards(
            [(RewardSource("format", kwargs={"completions": []}), load_reward_function("format"))], ["p"], ["c"], {}
        )
