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
    # A Latin-1 byte, as a file saved in a legacy encoding holds.
    "not UTF-8": (
        lambda good, col: [json.dumps(good), json.dumps(good).replace('"', '\udcff"', 1)],
        "d.jsonl line 2 is not valid UTF-8 (byte 0xff at column 2); save the file as UTF-8",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_malformed_input(tmp_path, capsys, recipe, case):
    module, good, column = RECIPES[recipe]
    make_lines, message = CASES[case]
    data = tmp_path / "d.jsonl"
    # surrogateescape writes a lone "\udcff" as the byte 0xff
    data.write_bytes("".join(line + "\n" for line in make_lines(good, column)).encode("utf-8", "surrogateescape"))
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
    ("sft", "max_steps=0", "max_steps must be at least 1 or null (no cap), got 0"),
    ("dpo", "max_steps=-5", "max_steps must be at least 1 or null (no cap), got -5"),
    ("sft", "data.padding_free=false", "config key data.padding_free is now model.fast_paths.padding_free"),
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


def test_a_byte_order_mark_is_accepted(tmp_path):
    """Files saved on Windows or exported from spreadsheets begin with one; jsonl and csv alike."""
    from tunekit.data.sources import read_rows

    (tmp_path / "d.jsonl").write_text("\ufeff" + json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    (tmp_path / "d.csv").write_text("\ufeffprompt,completion\na,b\n")
    for name in ("d.jsonl", "d.csv"):
        assert read_rows(str(tmp_path / name)).rows == [{"prompt": "a", "completion": "b"}]


def test_output_dir_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: sft.main([f"output_dir={out}", "max_steps=1"]))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == f"tunekit error: output_dir {out} is a file, not a folder; choose another output_dir"
    assert out.read_text() == "not a folder"


def test_compile_with_every_fast_path_off(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(
            lambda: sft.main([f"output_dir={out}", "train.compile=true", "model.fast_paths.enabled=false"])
        )
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    assert "train.compile needs model.fast_paths.enabled=true" in capsys.readouterr().err
    assert not out.exists()


def test_a_row_without_the_column_a_reward_needs_is_named_before_anything_is_written(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"{i} + 1 =", "answer": str(i + 1)} for i in range(40)]
    del rows[5]["answer"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    argv = [f"output_dir={out}", f"data.path={data}", "model.path=tiny-llama", "data.eval_fraction=0"]
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: grpo.main(argv))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(f"tunekit error: {data} line 6 lacks what a reward function needs")
    assert "'math_correct'" in last_line
    assert not out.exists()
