"""The eval recipe reads the chat rows SFT trains on: the conversation before the last assistant turn is the
prompt (rendered with the chat template and its generation prompt), that turn is the reference; perplexity scores
the assistant turns exactly as SFT's held-out loss does. On the tiny model's template and on a Llama-3-style one
that writes BOS itself and trims contents."""

import json
import math
import shutil

import pytest
from transformers import AutoTokenizer

from tunekit.config import load_config
from tunekit.data import synthetic
from tunekit.data.sources import Rows
from tunekit.errors import DataError
from tunekit.eval.data import EvalDataConfig, generation_rows
from tunekit.recipes.eval import EvalConfig
from tunekit.recipes.eval import run as run_eval
from tunekit.recipes.sft import SFTConfig
from tunekit.recipes.sft import run as run_sft
from tunekit.train.log import read_metrics

# Written for this test in the shape of Llama 3's template: BOS from the template, role headers, trimmed contents.
HEADER_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

JUDGE = """
def longer(prompts, completions, **columns):
    return [float(len(c)) for c in completions]
"""


def conversations(n, seed, split):
    """Synthetic arithmetic as chats; every third row has an earlier exchange, so the last turn is not the only."""
    rows = []
    for i, row in enumerate(synthetic.sft_examples(n, seed, split)):
        turns = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        if i % 3 == 0:
            turns = [{"role": "user", "content": "Ready?"}, {"role": "assistant", "content": "Yes."}, *turns]
        rows.append({"messages": [{"role": "system", "content": "Solve it."}, *turns], "source": f"s{i}"})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(params=["tiny template", "header template"])
def chat_model(request, tmp_path, tiny_llama_path):
    if request.param == "tiny template":
        return tiny_llama_path
    model = tmp_path / "header-model"
    shutil.copytree(tiny_llama_path, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = HEADER_TEMPLATE
    tokenizer.save_pretrained(model)
    return str(model)


def test_chat_rows_split_at_their_last_assistant_turn():
    rows = Rows("c.jsonl", conversations(3, 0, "held_out"), [4, 7, 9], unit="line")
    split = generation_rows(rows, EvalDataConfig())
    first = rows.rows[0]["messages"]
    assert split.rows[0]["prompt"] == first[:-1] and split.rows[0]["completion"] == first[-1]["content"]
    assert split.rows[0]["source"] == "s0" and split.positions == [4, 7, 9]
    prompt_completion = Rows("p.jsonl", [{"prompt": "a", "completion": "b"}])
    assert generation_rows(prompt_completion, EvalDataConfig()) is prompt_completion


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": "hi"}], "c.jsonl line 1: the conversation has no assistant message"),
        ([{"role": "assistant", "content": "hi"}], "c.jsonl line 1: the conversation opens with its only assistant"),
        ([{"role": "robot", "content": "hi"}], "c.jsonl line 1: message 0 has role 'robot'"),
    ],
)
def test_chat_rows_that_cannot_be_split_are_named(messages, message):
    with pytest.raises(DataError, match=message):
        generation_rows(Rows("c.jsonl", [{"messages": messages}], unit="line"), EvalDataConfig())


def test_eval_on_the_chat_file_an_sft_run_trained_on(tmp_path, chat_model, tiny_llama_path):
    train = write_jsonl(tmp_path / "train.jsonl", conversations(48, 0, "train"))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", conversations(12, 1, "held_out"))
    sft = tmp_path / "sft"
    overrides = [f"output_dir={sft}", f"model.path={chat_model}", f"data.path={train}", f"data.eval_path={held_out}"]
    overrides += ["max_steps=6", "train.micro_batch_size=8", "train.lr=5e-3", "train.progress=false"]
    run_sft(load_config(SFTConfig, None, overrides))
    sft_loss = [r["eval/loss"] for r in read_metrics(sft / "metrics.jsonl") if "eval/loss" in r][-1]

    judge = tmp_path / "judge.py"
    judge.write_text(JUDGE)
    result = run_eval(
        load_config(
            EvalConfig,
            None,
            [
                f"output_dir={tmp_path / 'eval'}",
                f"model.path={sft / 'final'}",
                f"data.path={held_out}",
                "tasks=[exact_match, perplexity, win_rate]",
                f"win_rate.judge={judge}:longer",
                "generation.max_new_tokens=12",
            ],
        )
    )
    # Perplexity's tokens and loss are SFT's held-out ones: the same file, the same assistant turns.
    assert result.metrics["perplexity/nll"] == pytest.approx(sft_loss, rel=1e-4)
    assert math.isfinite(result.metrics["exact_match"]) and result.record["counts"]["exact_match"]["examples"] == 12
    assert 0 <= result.metrics["win_rate"] <= 1
    tokenizer = AutoTokenizer.from_pretrained(sft / "final")
    rows = [json.loads(line) for line in held_out.read_text().splitlines()]
    for sample, row in zip(result.samples, rows, strict=True):
        expected = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        assert sample["prompt"] == expected
        assert ("<|start_header_id|>assistant" in sample["prompt"]) == (chat_model != tiny_llama_path)
        assert sample["opponent_completion"] == row["messages"][-1]["content"]
