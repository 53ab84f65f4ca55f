"""Data mixtures: shares by weight and temperature, draws with and without replacement, GSM8K mixed with the
generated data in the configured proportions, per-source summaries, held-out metrics and errors, exact resume."""

import json
import math
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from tunekit.config import load_config
from tunekit.data import synthetic
from tunekit.data.mixture import EpochDraws, draw, quotas, shares
from tunekit.data.pairs import PairDataConfig, load_pair_data
from tunekit.data.prompts import PromptDataConfig, load_prompts
from tunekit.data.sft import load_sft_data
from tunekit.errors import ConfigError, DataError
from tunekit.recipes.sft import SFTConfig, run


def gsm8k_source(shared_data, **extra):
    return {
        "name": "gsm8k",
        "path": str(shared_data / "gsm8k" / "train.jsonl"),
        "max_examples": 300,
        "prompt_column": "question",
        "completion_column": "answer",
        "prompt_template": "Question: {prompt}\nAnswer: ",
        **extra,
    }


def sft_data(*overrides):
    return load_config(SFTConfig, None, list(overrides)).data


def test_shares_follow_weights_and_temperature():
    assert shares([3.0, 1.0], 1.0) == pytest.approx([0.75, 0.25])
    # T=2: square roots, sqrt(3) : 1.
    assert shares([3.0, 1.0], 2.0) == pytest.approx([math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)])
    # A large temperature flattens towards uniform.
    assert shares([100.0, 1.0], 1e6) == pytest.approx([0.5, 0.5], abs=1e-4)
    assert quotas(10, [0.75, 0.25]) == [8, 2]  # 7.5 and 2.5: the tie goes to the earlier source
    assert quotas(7, [1 / 3, 1 / 3, 1 / 3]) == [3, 2, 2]


def test_without_replacement_takes_distinct_examples_then_repeats_them_evenly():
    picked = draw([10, 4], [0.5, 0.5], 16, replacement=False, seed=3)
    first = Counter(i for s, i in picked if s == 0)
    second = Counter(i for s, i in picked if s == 1)
    assert sum(first.values()) == 8 and max(first.values()) == 1  # 8 distinct of 10
    assert sorted(second.values()) == [2, 2, 2, 2]  # 8 drawn of 4: each twice
    assert picked == draw([10, 4], [0.5, 0.5], 16, replacement=False, seed=3)
    assert picked != draw([10, 4], [0.5, 0.5], 16, replacement=False, seed=4)


def test_each_epoch_draws_afresh_and_sees_every_example_before_repeating_one():
    pools = [[f"a{i}" for i in range(10)], [f"b{i}" for i in range(4)]]
    items = EpochDraws(pools, [0.5, 0.5], 6, replacement=False, seed=0)
    epochs = [items.for_epoch(e) for e in range(6)]
    assert list(items) == epochs[0] and len(items) == 6 and items[:2] == epochs[0][:2]
    assert epochs[1] != epochs[0] and items.drawn(1) == [3, 3]
    a_seen = [x for epoch in epochs for x in epoch if x.startswith("a")]
    assert sorted(a_seen[:9]) == sorted(set(a_seen[:9])) and set(a_seen[:12]) == set(pools[0])
    b_seen = [x for epoch in epochs for x in epoch if x.startswith("b")]
    assert all(sorted(b_seen[k : k + 4]) == sorted(pools[1]) for k in range(0, 16, 4))  # every pass covers all
    assert epochs == [EpochDraws(pools, [0.5, 0.5], 6, False, 0).for_epoch(e) for e in range(6)]
    loose = EpochDraws(pools, [0.5, 0.5], 6, replacement=True, seed=0)
    assert loose.for_epoch(0) != loose.for_epoch(1)
    assert items.pool == pools[0] + pools[1]


def test_gsm8k_and_generated_data_are_drawn_in_the_configured_proportions(shared_data, tokenizer):
    sources = json.dumps([gsm8k_source(shared_data, weight=3), {"path": "synthetic", "weight": 1}])
    common = [f"data.sources={sources}", "data.synthetic_size=300", "data.max_length=1024", "data.eval_fraction=0.1"]
    exact = sft_data(*common, "data.mixture.size=2000")
    train, held_out, stats = load_sft_data(exact, tokenizer, 0, synthetic.sft_examples)
    held_out_gsm8k = {tuple(x.input_ids) for x in held_out.by_source["gsm8k"]}
    assert len(train) == 2000
    assert "drawn" in stats["mixture"].summary() and "gsm8k 1500 drawn" in stats["mixture"].summary()
    assert stats["train gsm8k"].rows == 270 and stats["train synthetic"].rows == 300  # 10% of each held out
    assert stats["train"].rows == 570
    assert set(held_out.by_source) == {"gsm8k", "synthetic"} and len(held_out) == 30 + 30
    assert not held_out_gsm8k & {tuple(x.input_ids) for x in train}  # held-out rows are never drawn for training

    # With replacement the counts are random around the shares: 2000 draws at p = 0.75 have a standard deviation
    # of about 19.4, so 0.75 +- 0.03 is more than three of them.
    loose = sft_data(*common, "data.mixture.size=2000", "data.mixture.replacement=true")
    train, _, stats = load_sft_data(loose, tokenizer, 0, synthetic.sft_examples)
    n_gsm8k = int(stats["mixture"].summary().split("gsm8k ")[1].split(" drawn")[0])
    assert abs(n_gsm8k / 2000 - 0.75) < 0.03, n_gsm8k
    assert len({id(x) for x in train}) < 2000  # repeats

    # Temperature 2 with the examples-proportional default (no weights): shares sqrt(270) : sqrt(300).
    tempered = sft_data(f"data.sources={json.dumps([gsm8k_source(shared_data), {'path': 'synthetic'}])}", *common[1:])
    tempered.mixture.temperature = 2.0
    _, _, stats = load_sft_data(tempered, tokenizer, 0, synthetic.sft_examples)
    expected = round(570 * math.sqrt(270) / (math.sqrt(270) + math.sqrt(300)))
    assert f"gsm8k {expected} drawn" in stats["mixture"].summary()


def test_pairs_and_prompts_take_mixtures_through_the_same_seam(shared_data, tokenizer):
    hh = {"name": "hh", "path": str(shared_data / "hh-rlhf" / "harmless-base-test.jsonl"), "max_examples": 40}
    pairs = load_config(
        PairDataConfig, None, [f"sources={json.dumps([hh, {'path': 'synthetic', 'weight': 40}])}", "synthetic_size=40"]
    )
    pairs.max_length, pairs.max_prompt_length = 512, 256
    train, held_out, stats = load_pair_data(pairs, tokenizer, 0, synthetic.preference_pairs)
    assert len(train) == 36 + 40 and set(
        held_out.by_source
    )  # generated data holds out fresh rows == {"hh", "synthetic"}
    assert "train hh" in stats and "eval synthetic" in stats

    gsm = {"name": "gsm8k", "path": str(shared_data / "gsm8k" / "test.jsonl"), "max_examples": 50}
    prompts = load_config(
        PromptDataConfig,
        None,
        [
            f"sources={json.dumps([{**gsm, 'prompt_column': 'question'}, {'path': 'synthetic'}])}",
            "max_eval_examples=6",
            "max_prompt_length=1024",
        ],
    )
    read = load_prompts(prompts, tokenizer, 0)
    assert {len(items) for items in read.held_out.by_source.values()} == {3}  # max_eval_examples shared evenly
    assert "data (gsm8k): 45 prompts" in read.lines[0] and read.lines[-1].startswith("data (mixture)")
    # Examples-proportional by default: each source gives all of its training prompts once.
    assert sum(p.where.startswith(str(shared_data)) for p in read.train) == 45 and len(read.train) == 45 + 400


def test_bad_input_names_the_source_as_well_as_the_file_and_row(tmp_path, tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    data = sft_data(f"data.sources=[{{path: synthetic}}, {{name: mine, path: {bad}}}]", "data.synthetic_size=20")
    with pytest.raises(DataError, match=r"data.sources\[1\] \(mine\): .*bad.jsonl line 2: missing column 'completion'"):
        load_sft_data(data, tokenizer, 0, synthetic.sft_examples)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.sources=[{path: a.jsonl, chosen_column: c}]", r"data.sources\[0\].chosen_column is not a key of"),
        ("data.sources=[{path: a.jsonl}, {path: b/a.jsonl}]", r"data.sources\[1\].name 'a' is used by another"),
        ("data.sources=[{weight: 1}]", r"data.sources\[0\].path is missing"),
        ("data.sources=[{path: a.jsonl, weight: 0}]", r"data.sources\[0\].weight must be positive"),
        ("data.sources=[{path: a.jsonl, prompt_template: x}]", r"data.sources\[0\].prompt_template 'x' must contain"),
        ("data.mixture.temperature=0", r"data.mixture.temperature must be positive"),
    ],
)
def test_mixture_settings_are_checked_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, None, [override])


def test_a_mixture_takes_its_paths_from_the_sources():
    with pytest.raises(ConfigError, match=r"data.path is 'x.jsonl': with data.sources, give it per source"):
        load_config(SFTConfig, None, ["data.path=x.jsonl", "data.sources=[{path: a.jsonl}]"])


def test_a_mixture_run_logs_held_out_loss_per_source_and_resumes_exactly(tmp_path, shared_data, monkeypatch):
    monkeypatch.setattr("tunekit.train.runner.write_run_charts", lambda run_dir: [])
    sources = json.dumps([gsm8k_source(shared_data, max_examples=60, weight=1), {"path": "synthetic", "weight": 1}])
    common = [
        f"data.sources={sources}",
        "data.synthetic_size=60",
        "data.max_length=192",
        "data.eval_fraction=0.1",
        "data.mixture.size=8",  # 2 steps an epoch: the resumed run starts epoch 1, with its own draw
        "max_steps=4",
        "train.micro_batch_size=4",
        "train.save_every=2",
        "train.keep_checkpoints=0",
        "train.eval_every=0",  # held-out loss once, after the last step
        "train.progress=false",
    ]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    result = run(load_config(SFTConfig, None, [f"output_dir={whole}", *common]))
    evals = [r for r in result.history if "eval/loss" in r]
    assert [r["step"] for r in evals] == [4]
    for record in evals:
        assert {"eval/gsm8k/loss", "eval/synthetic/loss"} <= set(record)
        # eval/loss is the token-weighted mean over both sources, so it lies between them.
        low, high = sorted([record["eval/gsm8k/loss"], record["eval/synthetic/loss"]])
        assert low <= record["eval/loss"] <= high
    card = (whole / "final" / "README.md").read_text()
    assert "Training data: a mixture of `" in card  # the model card names the sources, not data.path
    assert "(gsm8k, weight 1.0), `synthetic` (synthetic, weight 1.0)" in card
    assert "data (mixture): 8 items drawn afresh each epoch" in card
    run(load_config(SFTConfig, None, [f"output_dir={resumed}", *common, f"resume={whole / 'checkpoints' / 'step-2'}"]))
    expected = load_file(str(whole / "final" / "adapter_model.safetensors"))
    got = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    trained = [r for r in result.history if "loss" in r]
    later = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in later if "loss" in r] == [(r["step"], r["loss"]) for r in trained[2:]]
