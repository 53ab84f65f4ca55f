"""SFT on tool calls: the template shows the tools, the assistant's calls are trained on, the tools' answers are not."""

import json

import pytest

from tunekit.data import synthetic
from tunekit.data.sft import DataConfig, tokenize_rows
from tunekit.data.sources import Rows, train_eval_rows
from tunekit.errors import ConfigError, DataError
from tunekit.losses.sft import IGNORE_INDEX

CALL = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "1234 + 4321"}}}
CHAT = [
    {"role": "user", "content": "What is 1234 + 4321?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "name": "calculator", "content": "5555"},
    {"role": "assistant", "content": "#### 5555"},
]


def trained_and_masked(example, tokenizer):
    pairs = list(zip(example.input_ids, example.labels, strict=True))
    trained = tokenizer.decode([i for i, label in pairs if label != IGNORE_INDEX])
    masked = tokenizer.decode([i for i, label in pairs if label == IGNORE_INDEX])
    return trained, masked


def test_tool_calls_are_trained_on_and_tool_answers_are_not(tokenizer):
    rows = Rows("chat.jsonl", [{"messages": CHAT}])
    (example,), _ = tokenize_rows(rows, DataConfig(tools=["calculator"]), tokenizer)
    trained, masked = trained_and_masked(example, tokenizer)
    assert '<tool_call>{"name": "calculator", "arguments": {"expression": "1234 + 4321"}}</tool_call>' in trained
    assert "#### 5555" in trained
    assert "5555</s>" not in trained.replace("#### 5555</s>", "")  # the tool's answer is never a target
    assert "Tools: calculator(expression)" in masked and "<|tool|>\n5555" in masked
    assert "What is" not in trained


def test_a_tools_column_wins_over_the_config_list_and_is_checked(tokenizer):
    schema = {"type": "function", "function": {"name": "adder", "parameters": {"properties": {"a": {}, "b": {}}}}}
    rows = Rows("chat.jsonl", [{"messages": CHAT, "tools": json.dumps([schema])}, {"messages": CHAT}])
    (own, default), _ = tokenize_rows(rows, DataConfig(tools=["calculator"]), tokenizer)
    assert "Tools: adder(a, b)" in tokenizer.decode(own.input_ids)
    assert "Tools: calculator(expression)" in tokenizer.decode(default.input_ids)
    (plain,), _ = tokenize_rows(Rows("chat.jsonl", [{"messages": CHAT}]), DataConfig(), tokenizer)
    assert "Tools:" not in tokenizer.decode(plain.input_ids)
    with pytest.raises(DataError, match="chat.jsonl row 1: column 'tools' must be a list of tool schemas"):
        tokenize_rows(Rows("chat.jsonl", [{"messages": CHAT, "tools": 3}]), DataConfig(), tokenizer)
    bad_calls = [CHAT[0], {"role": "assistant", "content": "", "tool_calls": "calc"}]
    with pytest.raises(DataError, match="tool_calls that are not a list"):
        tokenize_rows(Rows("chat.jsonl", [{"messages": bad_calls}]), DataConfig(), tokenizer)
    with pytest.raises(ConfigError, match="unknown tool 'calculater'"):
        tokenize_rows(Rows("chat.jsonl", [{"messages": CHAT}]), DataConfig(tools=["calculater"]), tokenizer)


def test_the_generated_tool_task_splits_held_out_questions_apart(tokenizer):
    config = DataConfig(path="synthetic:big-arithmetic-tools", synthetic_size=50, eval_fraction=0.2)
    train, held_out = train_eval_rows(config, 0, synthetic.sft_examples)
    questions = {row["messages"][0]["content"] for row in train.rows}
    assert not questions & {row["messages"][0]["content"] for row in held_out.rows}
    for row in train.rows:  # the transcripts are right: the calculator gives the answer the reply states
        call = row["messages"][1]["tool_calls"][0]["function"]["arguments"]["expression"]
        from tunekit.tools.builtin import calculator

        assert row["messages"][2]["content"] == calculator(call) and row["messages"][3]["content"].endswith(
            calculator(call)
        )
    with pytest.raises(ConfigError, match="no generated task 'nope'"):
        train_eval_rows(DataConfig(path="synthetic:nope"), 0, synthetic.sft_examples)


def test_the_half_tool_warm_start_calls_in_about_half_its_rows_and_every_answer_is_right():
    from tunekit.tools.builtin import calculator

    rows = synthetic.big_arithmetic_half_tool_transcripts(400, seed=3)
    calling = [row for row in rows if len(row["messages"]) == 4]
    assert 0.4 < len(calling) / len(rows) < 0.6
    for row in rows:
        question, reply = row["messages"][0]["content"], row["messages"][-1]["content"]
        expression = question.removeprefix("What is (").removesuffix(")?")
        assert reply == f"####{calculator(expression)}"


def test_a_number_tokenizes_alike_in_the_question_the_call_and_the_reply(tokenizer):
    # Copying digits is what the tiny model learns; a number the tokenizer merges in one place and splits in
    # another (" 37" is one token, "37" two) it did not learn to copy.
    for row in synthetic.big_arithmetic_tool_transcripts(50, seed=5):
        question, call, tool, reply = row["messages"]
        expression = call["tool_calls"][0]["function"]["arguments"]["expression"]
        numbers = [*expression.replace("*", " ").replace("+", " ").replace("-", " ").split(), tool["content"]]
        rendered = [question["content"], json.dumps({"expression": expression}), tool["content"], reply["content"]]
        for number in numbers:
            digits = [tokenizer.convert_tokens_to_ids(d) for d in number]
            for text in rendered:
                if number in text:
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                    assert any(ids[i : i + len(digits)] == digits for i in range(len(ids))), (number, text)
