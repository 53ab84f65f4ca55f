"""Invariances of the shared runner, shown on SFT with the tiny model."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from tunekit.config import load_config
from tunekit.errors import ConfigError
from tunekit.recipes.sft import SFTConfig, run
from tunekit.train.log import read_metrics


def sft_config(output_dir, *overrides):
    base = [
        f"output_dir={output_dir}",
        "data.synthetic_size=64",
        "data.eval_fraction=0",
        "train.progress=false",
        "train.lr=1e-2",
        "train.warmup_ratio=0",
    ]
    return load_config(SFTConfig, None, base + list(overrides))


def adapter(run_dir):
    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


def test_accumulating_micro_batches_equals_one_large_batch(tmp_path):
    # train.optimizer=sgd: weights move linearly with the gradients, so equal weights mean equal gradients.
    # Synthetic examples have unequal lengths, so a per-micro-batch mean would weigh tokens differently.
    big = run(
        sft_config(
            tmp_path / "big",
            "train.micro_batch_size=4",
            "train.grad_accum_steps=1",
            "max_steps=3",
            "train.optimizer=sgd",
        )
    )
    small = run(
        sft_config(
            tmp_path / "small",
            "train.micro_batch_size=1",
            "train.grad_accum_steps=4",
            "max_steps=3",
            "train.optimizer=sgd",
        )
    )
    for a, b in zip(big.history, small.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
    big_w, small_w = adapter(tmp_path / "big"), adapter(tmp_path / "small")
    for name in big_w:
        assert torch.allclose(big_w[name], small_w[name], atol=1e-5), name


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full_dir = tmp_path / "full"
    full = run(
        sft_config(
            full_dir,
            "max_steps=6",
            "train.micro_batch_size=4",
            "train.save_every=2",
            "train.keep_checkpoints=0",
            "model.adapter.dropout=0.1",
        )
    )
    assert (full_dir / "checkpoints" / "step-4" / "COMPLETE").is_file()

    # Resume in a copy of the run directory whose last checkpoint and final/ were lost.
    cut = tmp_path / "cut"
    shutil.copytree(full_dir, cut)
    shutil.rmtree(cut / "checkpoints" / "step-6")
    shutil.rmtree(cut / "final")
    resumed = run(
        sft_config(
            cut,
            "max_steps=6",
            "train.micro_batch_size=4",
            "train.save_every=2",
            "train.keep_checkpoints=0",
            "model.adapter.dropout=0.1",
            "resume=auto",
        )
    )
    assert [r["step"] for r in resumed.history] == [5, 6]
    for a, b in zip(full.history[4:], resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    full_w, resumed_w = adapter(full_dir), adapter(cut)
    for name in full_w:
        assert torch.allclose(full_w[name], resumed_w[name], atol=1e-6), name
    # metrics.jsonl holds one line per step, with no duplicates from the resumed part.
    assert [r["step"] for r in read_metrics(cut / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_existing_run_directory_needs_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="already holds a run; pass resume=auto"):
        run(sft_config(out, "max_steps=1"))


def test_run_directory_follows_the_contract(tmp_path):
    out = tmp_path / "run"
    result = run(sft_config(out, "max_steps=2", "train.micro_batch_size=4", "data.eval_fraction=0.25"))
    assert (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "step-2" / "COMPLETE").is_file()
    assert (out / "final" / "adapter_config.json").is_file()
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert (out / "final" / "tokenizer_config.json").is_file()
    records = read_metrics(out / "metrics.jsonl")
    assert set(records[0]) >= {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"}
    assert "eval/loss" in records[-1]
    assert result.step == 2
