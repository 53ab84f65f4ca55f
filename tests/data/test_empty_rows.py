"""Rows with nothing to learn from (an empty completion, chosen or rejected response, assistant turns, text or RL
prompt) are dropped and counted in the data summary, or refused by line with data.empty_rows=error."""

import json

import pytest

from tunekit.data.pairs import PairDataConfig, tokenize_pairs
from tunekit.data.prompts import PromptDataConfig, load_prompts
from tunekit.data.sft import DataConfig, tokenize_rows
from tunekit.data.sources import Rows
from tunekit.errors import DataError


def rows(*items):
    return Rows("d.jsonl", list(items), [2 * i + 1 for i in range(len(items))], unit="line")


def chat(*assistant_turns):
    messages = []
    for turn in assistant_turns:
        messages += [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": turn}]
    return {"messages": messages}


SFT_CASES = {
    "empty completion": ({"prompt": "2 + 2?", "completion": ""}, "column 'completion' is empty"),
    "blank completion": ({"prompt": "2 + 2?", "completion": " \n\t"}, "column 'completion' is empty"),
    "empty assistant message": (
        {"prompt": "2 + 2?", "completion": [{"role": "assistant", "content": ""}]},
        "column 'completion' is empty",
    ),
    "every assistant turn empty": (chat("", " "), "every assistant turn is empty"),
    "empty text": ({"text": "  "}, "column 'text' is empty"),
}
GOOD = {"empty text": {"text": "4 is the answer."}, "every assistant turn empty": chat("4", "4")}


@pytest.mark.parametrize("case", SFT_CASES)
def test_an_sft_row_with_nothing_to_learn_is_dropped_and_counted(tokenizer, case):
    row, _ = SFT_CASES[case]
    good = GOOD.get(case, {"prompt": "2 + 2?", "completion": " 4"})
    examples, stats = tokenize_rows(rows(good, row, good), DataConfig(), tokenizer)
    assert [e.index for e in examples] == [1, 5] and stats.empty == 1
    assert "3 rows -> 2 examples" in stats.summary() and "1 dropped as empty" in stats.summary()


@pytest.mark.parametrize("case", SFT_CASES)
def test_an_sft_row_with_nothing_to_learn_is_named_on_request(tokenizer, case):
    row, what = SFT_CASES[case]
    good = GOOD.get(case, {"prompt": "2 + 2?", "completion": " 4"})
    with pytest.raises(DataError, match=f"d.jsonl line 3: {what} \\(data.empty_rows=error"):
        tokenize_rows(rows(good, row), DataConfig(empty_rows="error"), tokenizer)


def test_one_empty_assistant_turn_among_others_is_kept(tokenizer):
    """A conversation with something to learn stays; only one with nothing at all is dropped."""
    examples, stats = tokenize_rows(rows(chat("", "4")), DataConfig(), tokenizer)
    assert len(examples) == 1 and stats.empty == 0


def test_nothing_but_empty_rows_is_an_error(tokenizer):
    with pytest.raises(DataError, match="every row of d.jsonl is empty"):
        tokenize_rows(rows({"text": ""}, {"text": " "}), DataConfig(), tokenizer)


@pytest.mark.parametrize(
    ("pair", "what"),
    [
        ({"prompt": "2 + 2?", "chosen": "", "rejected": " 5"}, "the 'chosen' response is empty"),
        ({"prompt": "2 + 2?", "chosen": " 4", "rejected": "  "}, "the 'rejected' response is empty"),
        ({"prompt": "2 + 2?", "chosen": "", "rejected": ""}, "the 'chosen' and 'rejected' response is empty"),
        ({"chosen": "Human: 2 + 2?\n\nAssistant:", "rejected": "Human: 2 + 2?\n\nAssistant: 5"}, "'chosen'"),
    ],
)
def test_a_pair_with_an_empty_response_is_dropped_or_named(tokenizer, pair, what):
    good = {"prompt": "2 + 2?", "chosen": " 4", "rejected": " 5"}
    pairs, stats = tokenize_pairs(rows(good, pair), PairDataConfig(), tokenizer)
    assert len(pairs) == 1 and stats.empty_dropped == 1 and "1 with an empty response dropped" in stats.summary()
    with pytest.raises(DataError, match=f"d.jsonl line 3: .*{what}"):
        tokenize_pairs(rows(good, pair), PairDataConfig(empty_rows="error"), tokenizer)


@pytest.mark.parametrize("prompt", ["", "   ", [{"role": "user", "content": " "}]])
def test_an_empty_rl_prompt_is_dropped_or_named(tokenizer, tmp_path, prompt):
    path = tmp_path / "p.jsonl"
    lines = [{"prompt": "1 + 1 =", "answer": "2"}, {"prompt": prompt, "answer": "0"}]
    lines.append({"prompt": "2 + 2 =", "answer": "4"})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    read = load_prompts(PromptDataConfig(path=str(path), eval_fraction=0), tokenizer, 0)
    assert [p.index for p in read.train] == [1, 3] and read.empty_dropped == 1
    with pytest.raises(DataError, match="p.jsonl line 2: the prompt \\(column 'prompt'\\) is empty"):
        load_prompts(PromptDataConfig(path=str(path), eval_fraction=0, empty_rows="error"), tokenizer, 0)
