"""One table: each malformed input, for every recipe and its data format, ends in exit code 2 and one message."""

import json

import pytest

from tunekit.errors import USER_ERROR_EXIT_CODE, exit_on_user_error
from tunekit.recipes import dpo, grpo, pretrain, reward, sft

RECIPES = {
    "sft": (sft, {"prompt": "a", "completion": "b"}, "completion"),
    "pretrain": (pretrain, {"text": "some words"}, "text"),
    "reward": (reward, {"prompt": "a", "chosen": "b", "rejected": "c"}, "rejected"),
    "dpo": (dpo, {"prompt": "a", "chosen": "b", "rejected": "c"}, "rejected"),
    "grpo": (grpo, {"prompt": "a", "answer": "1"}, "prompt"),
}

CASES = {
    "malformed line": (lambda good, col: [json.dumps(good), '{"oops": '], "d.jsonl line 2 is not valid JSON"),
    "missing column": (
        lambda good, col: [json.dumps(good), json.dumps({k: v for k, v in good.items() if k != col})],
        "d.jsonl line 2: missing column '{col}'",
    ),
    "empty file": (lambda good, col: [], "d.jsonl holds no rows"),
    "not an object": (
        lambda good, col: [json.dumps(good), "[1, 2]"],
        "d.jsonl line 2 is a JSON list, expected an object",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_malformed_input(tmp_path, capsys, recipe, case):
    module, good, column = RECIPES[recipe]
    make_lines, message = CASES[case]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(line + "\n" for line in make_lines(good, column)))
    out = tmp_path / "run"
    argv = [f"output_dir={out}", f"data.path={data}", "model.path=tiny-llama", "data.eval_fraction=0"]
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: module.main(argv))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("tunekit error: ")
    assert message.format(col=column) in last_line
    assert not out.exists()


# A value out of its range: refused when the config is read, naming the full key, before anything is written.
VALUES = [
    ("sft", "train.lr=-1", "train.lr must be positive, got -1.0"),
    ("sft", "train.micro_batch_size=0", "train.micro_batch_size must be at least 1, got 0"),
    ("sft", "train.grad_accum_steps=0", "train.grad_accum_steps must be at least 1, got 0"),
    ("dpo", "train.epochs=0", "train.epochs must be at least 1, got 0"),
    ("reward", "train.warmup_ratio=1", "train.warmup_ratio must be in [0, 1), got 1.0"),
    ("pretrain", "train.keep_checkpoints=-1", "train.keep_checkpoints must be 0 or more, got -1"),
    ("sft", "data.max_length=0", "data.max_length must be at least 1, got 0"),
    ("dpo", "data.eval_fraction=1.5", "data.eval_fraction must be in [0, 1), got 1.5"),
    ("grpo", "data.synthetic_size=0", "data.synthetic_size must be at least 1, got 0"),
    ("sft", "model.adapter.r=0", "model.adapter.r must be at least 1, got 0"),
    ("reward", "model.adapter.dropout=1", "model.adapter.dropout must be in [0, 1), got 1.0"),
    ("grpo", "sampling.top_p=0", "sampling.top_p must be in (0, 1], got 0.0"),
]


@pytest.mark.parametrize(("recipe", "override", "message"), VALUES, ids=[v[1] for v in VALUES])
def test_out_of_range_value(tmp_path, capsys, recipe, override, message):
    module = RECIPES[recipe][0]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: module.main([f"output_dir={out}", override]))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == f"tunekit error: {message}"
    assert not out.exists()
