"""Unpaired binary feedback (KTO): the three row forms, pairs read as two examples, labels checked, and the
mismatched rows of a batch (issue 31)."""

import json

import pytest
import torch

from tunekit.data import synthetic
from tunekit.data.sources import Rows, read_rows
from tunekit.data.unpaired import UnpairedDataConfig, collate_unpaired, load_unpaired_data, tokenize_unpaired
from tunekit.errors import DataError


def test_prompt_completion_chat_and_messages_rows(tokenizer):
    rows = Rows(
        "mem",
        [
            {"prompt": "Q: 1+1?", "completion": " 2", "label": True},
            {"prompt": [{"role": "user", "content": "1+1?"}], "completion": [{"role": "assistant", "content": "3"}],
             "label": False},
            {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}], "label": True},
        ],
    )  # fmt: skip
    examples, stats = tokenize_unpaired(rows, UnpairedDataConfig(), tokenizer)
    assert [e.label for e in examples] == [True, False, True]
    assert (stats.desirable, stats.undesirable, stats.from_pairs) == (2, 1, 0)
    assert examples[0].prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(examples[0].prompt_ids[1:]) == "Q: 1+1?"
    assert tokenizer.decode(examples[0].completion_ids) == " 2</s>"
    # The chat prompt and the messages row render the same prompt; each completion is the assistant turn.
    assert examples[1].prompt_ids == examples[2].prompt_ids
    assert tokenizer.decode(examples[1].prompt_ids).endswith("<|assistant|>\n")
    assert tokenizer.decode(examples[1].completion_ids) == "3</s>"
    assert tokenizer.decode(examples[2].completion_ids).startswith("2")


def test_pairs_become_a_desirable_and_an_undesirable_example(tokenizer):
    rows = Rows("mem", synthetic.preference_pairs(3, seed=0))
    examples, stats = tokenize_unpaired(rows, UnpairedDataConfig(), tokenizer)
    assert (stats.rows, stats.from_pairs, len(examples)) == (3, 3, 6)
    for k, row in enumerate(rows.rows):
        chosen, rejected = examples[2 * k], examples[2 * k + 1]
        assert (chosen.label, rejected.label) == (True, False)
        assert chosen.prompt_ids == rejected.prompt_ids
        assert tokenizer.decode(chosen.completion_ids) == row["chosen"] + "</s>"
        assert tokenizer.decode(rejected.completion_ids) == row["rejected"] + "</s>"


def write(tmp_path, rows):
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "a", "completion": "b"}, "u.jsonl line 2: missing column 'label'"),
        ({"prompt": "a", "completion": "b", "label": None}, "u.jsonl line 2: a null in column 'label'"),
        ({"prompt": "a", "completion": "b", "label": 1}, "u.jsonl line 2: column 'label' must be true or false, got 1"),
        ({"prompt": "a", "completion": "b", "label": "true"}, "must be true or false, got 'true'"),
        ({"prompt": "a", "label": True}, "u.jsonl line 2: missing column 'completion'"),
        ({"messages": [{"role": "user", "content": "a"}], "label": True}, "must end with the assistant message"),
    ],
)
def test_bad_rows_are_named(tmp_path, tokenizer, row, message):
    path = write(tmp_path, [{"prompt": "a", "completion": "b", "label": True}, row])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tokenize_unpaired(read_rows(path), UnpairedDataConfig(), tokenizer)


def test_held_out_examples_come_in_a_seeded_order_that_parts_pairs(tokenizer):
    config = UnpairedDataConfig(synthetic_size=20, eval_fraction=0.5)
    _, held_out, stats = load_unpaired_data(config, tokenizer, 0, synthetic.preference_pairs)
    _, again, _ = load_unpaired_data(config, tokenizer, 0, synthetic.preference_pairs)
    assert stats["eval"].from_pairs == 10 and len(held_out) == 20
    assert [e.index for e in held_out] == [e.index for e in again]
    # Unshuffled, every odd example would follow its own pair's chosen completion.
    same_prompt = sum(a.prompt_ids == b.prompt_ids for a, b in zip(held_out, held_out[1:], strict=False))
    assert same_prompt < 10


def test_collate_rotates_the_completions_for_the_reference_point(tokenizer):
    rows = Rows(
        "mem",
        [{"prompt": p, "completion": c, "label": lab} for p, c, lab in [("a", " x", True), ("bb", " yy", False),
                                                                          ("c", " zzz", True)]],
    )  # fmt: skip
    examples, _ = tokenize_unpaired(rows, UnpairedDataConfig(), tokenizer)
    batch = collate_unpaired(examples, pad_id=tokenizer.pad_token_id)
    assert batch["label"].tolist() == [True, False, True]
    assert int(batch["num_items"]) == 3 and batch["input_ids"].shape[0] == 6

    def completion(row):
        return batch["labels"][row][batch["labels"][row] != -100].tolist()

    def prompt(row):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        return ids[: len(ids) - len(completion(row))].tolist()

    for i, e in enumerate(examples):
        assert prompt(i) == e.prompt_ids and completion(i) == e.completion_ids
        # Row B + i: prompt i with the completion of example i - 1 (the last one for i = 0), as TRL pairs them.
        assert prompt(3 + i) == e.prompt_ids and completion(3 + i) == examples[i - 1].completion_ids
    assert torch.equal(batch["example_ids"], torch.tensor([e.index for e in examples]))
