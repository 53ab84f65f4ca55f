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
