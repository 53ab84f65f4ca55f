"""Every data mistake is reported with the file and row at fault, before training."""

import json
import re

import pytest

from tunekit.data import synthetic
from tunekit.data.prompts import PromptDataConfig, load_prompts
from tunekit.data.sft import DataConfig, load_sft_data
from tunekit.errors import DataError


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def load(tokenizer, **data):
    return load_sft_data(DataConfig(eval_fraction=0.0, **data), tokenizer, 0, synthetic.sft_examples)


def test_malformed_jsonl_line_is_named(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, "", '{"text": "broken', {"text": "fine"}])
    with pytest.raises(DataError, match=r"d.jsonl line 3 is not valid JSON"):
        load(tokenizer, path=path)


def test_missing_column_names_row_and_column(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError, match=r"d.jsonl line 2: missing column 'completion'"):
        load(tokenizer, path=path)


def test_unrecognised_columns_list_what_is_expected(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(
        DataError, match=r"line 1: cannot tell the data format from its columns \['answer', 'question'\]"
    ):
        load(tokenizer, path=path)


def test_empty_dataset(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [])
    with pytest.raises(DataError, match="d.jsonl holds no rows"):
        load(tokenizer, path=path)


def test_every_example_truncated_away(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a long prompt " * 10, "completion": " b"}] * 3)
    with pytest.raises(DataError, match=r"every example of .*d.jsonl was truncated away.*max_length=8"):
        load(tokenizer, path=path, max_length=8)


def test_bad_messages_are_named(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "bot"}]}])
    with pytest.raises(DataError, match="line 1: message 1 of 'messages' needs 'role' and 'content'"):
        load(tokenizer, path=path)
    path = write_jsonl(tmp_path / "e.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match="line 1: the conversation has no assistant message"):
        load(tokenizer, path=path)


def test_missing_file_and_bad_extension(tokenizer, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(tokenizer, path=str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported extension '.txt'"):
        load(tokenizer, path=str(tmp_path / "d.txt"))


def test_parquet_and_csv_rows_are_named_by_row(tokenizer, tmp_path):
    import pandas as pd

    pd.DataFrame({"prompt": ["a", "b"], "completion": ["c", None]}).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d.parquet row 2: column 'completion' is empty"):
        load(tokenizer, path=str(tmp_path / "d.parquet"))
    pd.DataFrame({"text": ["one", "two"]}).to_csv(tmp_path / "d.csv", index=False)
    train, _, stats = load(tokenizer, path=str(tmp_path / "d.csv"))
    assert len(train) == 2 and stats["train"].rows == 2


@pytest.mark.parametrize(
    ("completion", "message"),
    [
        ([{"role": "assistant", "value": " 4"}], "line 1: message 0 of 'completion' needs 'role' and 'content' keys"),
        (
            [{"role": "assistant", "content": [{"type": "text", "text": " 4"}]}],
            "line 1: message 0 of 'completion' has content that is not a string (list)",
        ),
        ([{"role": "user", "content": " 4"}], "line 1: column 'completion' must be a string or one assistant message"),
    ],
)
def test_a_completion_message_without_string_content_is_named(tokenizer, tmp_path, completion, message):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2 + 2 =", "completion": completion}])
    with pytest.raises(DataError, match=re.escape(message)):
        load(tokenizer, path=path)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([{"role": "user", "text": "2 + 2?"}], "line 2: message 0 of 'prompt' needs 'role' and 'content' keys"),
        ([{"role": "usr", "content": "2 + 2?"}], "line 2: message 0 has role 'usr'"),
        ([], "line 2: column 'prompt' must be a non-empty list of messages"),
        (["2 + 2?"], "line 2: message 0 of 'prompt' needs 'role' and 'content' keys"),
        (7, "line 2: column 'prompt' must be a string or a list of messages"),
    ],
)
def test_bad_rl_prompts_are_named(tokenizer, tmp_path, prompt, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1 + 1?"}, {"prompt": prompt}])
    with pytest.raises(DataError, match=re.escape(message)):
        load_prompts(PromptDataConfig(path=path, eval_fraction=0), tokenizer, 0)


def test_examples_are_numbered_by_their_line_in_the_file(tokenizer, tmp_path):
    """Loss-spike reports give example ids: they must name the lines an error message would name."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"line {k}:", "completion": " x"} for k in range(1, 21)])
    train, held_out, _ = load_sft_data(DataConfig(path=path, eval_fraction=0.25), tokenizer, 0, synthetic.sft_examples)
    for example in [*train, *held_out]:
        text = tokenizer.decode(example.input_ids, skip_special_tokens=True)
        assert text.startswith(f"line {example.index}:")
    assert sorted(e.index for e in [*train, *held_out]) == list(range(1, 21))
