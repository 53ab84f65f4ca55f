"""Preference pairs: explicit and implicit prompts, real hh-rlhf rows, and bad rows named."""

import json
import re

import pytest

from tunekit.data.pairs import PairDataConfig, implicit_prompt, load_pair_data, tokenize_pairs
from tunekit.data.sources import Rows, read_rows
from tunekit.errors import DataError


def test_implicit_prompt_ends_at_the_last_shared_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Why did the chicken"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."
    assert (
        implicit_prompt(chosen, rejected, "\n\nAssistant:")
        == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
    )
    # Responses that start alike are not eaten into the prompt.
    assert implicit_prompt("Q\n\nAssistant: The cat", "Q\n\nAssistant: The dog", "\n\nAssistant:") == "Q\n\nAssistant:"


def test_implicit_split_on_real_hh_rlhf_rows(tokenizer, shared_data):
    rows = read_rows(str(shared_data / "hh-rlhf" / "harmless-base-test.jsonl"))
    sample = rows.subset(list(range(50)))
    pairs, stats = tokenize_pairs(sample, PairDataConfig(max_length=4096), tokenizer)
    assert stats.rows == 50
    for pair in pairs:
        row = dict(zip(sample.positions, sample.rows, strict=True))[pair.index]
        prompt = tokenizer.decode(pair.prompt_ids[1:])
        assert prompt.endswith("\n\nAssistant:")
        assert row["chosen"].startswith(prompt) and row["rejected"].startswith(prompt)
        chosen = tokenizer.decode(pair.chosen_ids)
        assert prompt + chosen == row["chosen"] + tokenizer.eos_token
        assert "\n\nAssistant:" not in tokenizer.decode(pair.rejected_ids)[:1]


def test_explicit_prompt_and_chat_messages(tokenizer):
    rows = Rows(
        "mem",
        [
            {"prompt": "Q: 1+1?", "chosen": " 2", "rejected": " 3", "margin": 1.5},
            {
                "prompt": [{"role": "user", "content": "1+1?"}],
                "chosen": [{"role": "assistant", "content": "2"}],
                "rejected": [{"role": "assistant", "content": "3"}],
            },
        ],
    )
    pairs, _ = tokenize_pairs(rows, PairDataConfig(), tokenizer)
    assert pairs[0].margin == 1.5 and pairs[1].margin == 0.0
    assert pairs[0].prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(pairs[1].prompt_ids).endswith("<|assistant|>\n")
    assert tokenizer.decode(pairs[1].chosen_ids) == "2</s>"


def write(tmp_path, rows):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        ([{"prompt": "a", "chosen": "b"}], {}, "p.jsonl line 1: missing column 'rejected'"),
        (
            [{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}],
            {},
            "p.jsonl line 1: column 'margin' must be a finite number, got 'big'",
        ),
        (
            [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": "b"}],
            {"identical_pairs": "error"},
            "p.jsonl line 2: chosen and rejected responses are identical",
        ),
        (
            [{"prompt": "word " * 50, "chosen": "b", "rejected": "c"}],
            {"max_length": 16},
            "p.jsonl line 1: the prompt has",
        ),
        ([{"chosen": "abc", "rejected": "xyz"}], {}, "line 1: no prompt column and chosen/rejected share no beginning"),
        (
            [
                {
                    "prompt": "a",
                    "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "b"}]}],
                    "rejected": "c",
                }
            ],
            {},
            "p.jsonl line 1: message 0 of 'chosen' has content that is not a string (list)",
        ),
        (
            [{"prompt": [{"role": "user", "text": "a"}], "chosen": "b", "rejected": "c"}],
            {},
            "p.jsonl line 1: message 0 of 'prompt' needs 'role' and 'content' keys",
        ),
        (
            [{"prompt": "a", "chosen": " same start then b" * 20, "rejected": " same start then b" * 19 + " c"}],
            {"identical_pairs": "error", "max_length": 32},
            "p.jsonl line 1: chosen and rejected are identical in their first",
        ),
    ],
)
def test_bad_pairs_name_the_row(tokenizer, tmp_path, rows, overrides, message):
    config = PairDataConfig(path=write(tmp_path, rows), eval_fraction=0, **overrides)
    with pytest.raises(DataError, match=re.escape(message)):
        load_pair_data(config, tokenizer, 0, lambda n, s: [])


def test_identical_pairs_are_dropped_and_counted(tokenizer, tmp_path):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": "b"}]
    pairs, _, stats = load_pair_data(
        PairDataConfig(path=write(tmp_path, rows), eval_fraction=0), tokenizer, 0, lambda n, s: []
    )
    assert len(pairs) == 1 and stats["train"].identical_dropped == 1


def test_pairs_that_differ_only_past_max_length_are_dropped(tokenizer, tmp_path):
    """Cut to fit, two responses that differed only at their ends would train on no preference at all."""
    long_tail = " same start then b" * 20
    rows = [
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        {"prompt": "a", "chosen": long_tail, "rejected": long_tail[:-2] + " c"},
        {"prompt": "a", "chosen": long_tail, "rejected": " different" + long_tail},
    ]
    config = PairDataConfig(path=write(tmp_path, rows), eval_fraction=0, max_length=32)
    pairs, _, stats = load_pair_data(config, tokenizer, 0, lambda n, s: [])
    assert [p.index for p in pairs] == [1, 3]
    assert stats["train"].identical_dropped == 1 and stats["train"].response_truncated == 1
    assert all(p.chosen_ids != p.rejected_ids for p in pairs)


def test_a_pair_is_numbered_by_its_line_in_the_file(tokenizer, tmp_path):
    """Spike reports and errors name the same rows, whatever the held-out split took."""
    rows = [{"prompt": f"line {k}", "chosen": "b", "rejected": "c"} for k in range(1, 21)]
    pairs, held_out, _ = load_pair_data(
        PairDataConfig(path=write(tmp_path, rows), eval_fraction=0.25), tokenizer, 0, lambda n, s: []
    )
    for pair in [*pairs, *held_out]:
        assert tokenizer.decode(pair.prompt_ids, skip_special_tokens=True) == f"line {pair.index}"
    assert sorted(p.index for p in [*pairs, *held_out]) == list(range(1, 21))


def test_a_long_prompt_keeps_its_bos_and_its_last_tokens(tokenizer, tmp_path):
    prompt = " ".join(f"w{k}" for k in range(40))
    rows = [{"prompt": prompt, "chosen": " yes", "rejected": " no"}]
    config = PairDataConfig(path=write(tmp_path, rows), eval_fraction=0, max_prompt_length=6)
    [pair], _, stats = load_pair_data(config, tokenizer, 0, lambda n, s: [])
    full = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert pair.prompt_ids == [tokenizer.bos_token_id] + full[-5:]
    assert stats["train"].prompt_truncated == 1
