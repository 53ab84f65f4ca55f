"""The generate recipe (sequence-level distillation data): the teacher's completions become SFT rows that the sft
recipe reads as they are, a checker keeps only the right ones, and a killed run resumes to the same bytes."""

import json

import pytest

import tunekit.recipes.generate as generate
from tunekit.config import load_config
from tunekit.recipes.generate import GenerateConfig, run
from tunekit.recipes.sft import SFTConfig
from tunekit.recipes.sft import run as run_sft

QUICK = ["model.path=tiny-llama", "data.synthetic_size=6", "sampling.max_new_tokens=4", "progress=false"]


def config(out, *overrides):
    return load_config(GenerateConfig, None, [f"output_dir={out}", *QUICK, *overrides])


def rows(out):
    return [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]


def test_rows_are_sft_data_and_a_checker_keeps_only_what_it_passes(tmp_path, monkeypatch):
    monkeypatch.setattr("tunekit.train.runner.write_run_charts", lambda run_dir: [])
    every = run(config(tmp_path / "every", "sampling.num_generations=2", "sampling.temperature=1.0"))
    written = rows(tmp_path / "every")
    assert every.counts["completions"] == 12
    assert len(written) == every.counts["written"] == 12 - every.counts.get("empty", 0)
    # The prompt as the data wrote it (no template applied twice), and the row's other columns.
    assert all(r["prompt"].startswith("Question: ") and "answer" in r and "completion" in r for r in written)
    overrides = [f"data.path={tmp_path / 'every' / 'sft.jsonl'}", "model.path=tiny-llama", "data.eval_fraction=0"]
    run_sft(load_config(SFTConfig, None, [f"output_dir={tmp_path / 'sft'}", *overrides, "max_steps=1"]))

    # A checker that passes only completions containing a digit: the written rows are exactly those.
    checker = tmp_path / "digits.py"
    checker.write_text(
        "def has_digit(prompts, completions, **columns):\n"
        "    return [float(any(c.isdigit() for c in text)) for text in completions]\n"
    )
    kept = run(
        config(
            tmp_path / "kept", "sampling.num_generations=2", "sampling.temperature=1.0", f"keep_if={checker}:has_digit"
        )
    )
    assert kept.counts["written"] + kept.counts.get("rejected", 0) + kept.counts.get("empty", 0) == 12
    assert all(any(c.isdigit() for c in r["completion"]) for r in rows(tmp_path / "kept"))
    assert len(rows(tmp_path / "kept")) == kept.counts["written"]


def test_killed_and_resumed_run_writes_the_same_file(tmp_path, monkeypatch):
    overrides = ["chunk_size=2", "sampling.temperature=1.0"]
    whole = run(config(tmp_path / "whole", *overrides))
    real = generate.generate_rollout
    calls = []

    def killed_on_third_chunk(model, tokenizer, prompts, sampling):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(prompts))
        return real(model, tokenizer, prompts, sampling)

    monkeypatch.setattr(generate, "generate_rollout", killed_on_third_chunk)
    with pytest.raises(SystemExit, match="130"):
        run(config(tmp_path / "killed", *overrides))
    monkeypatch.setattr(generate, "generate_rollout", real)
    resumed = run(config(tmp_path / "killed", *overrides, "resume=auto"))
    assert (tmp_path / "killed" / "sft.jsonl").read_bytes() == (tmp_path / "whole" / "sft.jsonl").read_bytes()
    assert resumed.counts == whole.counts


def test_a_teacher_path_that_does_not_exist_says_how_to_make_it(tmp_path, capsys):
    from tunekit.errors import exit_on_user_error

    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(lambda: generate.main([f"output_dir={tmp_path / 'out'}", "model.path=runs/no-teacher"]))
    assert stopped.value.code == 2
    assert "recipes/sft/tiny-warmstart.yaml" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
