"""The eval recipe end to end on the tiny model: a base model, an SFT run's final/ and its merged export, and
mistakes refused with exit code 2 before a run directory exists."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunekit.config import load_config
from tunekit.errors import USER_ERROR_EXIT_CODE, exit_on_user_error
from tunekit.eval.tasks import outcomes
from tunekit.recipes.eval import EvalConfig, main, run

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "eval"
FAST = ["data.synthetic_size=8", "generation.max_new_tokens=8", "batch_size=8"]

JUDGES = """
def shorter(prompts, completions, **columns):
    return [-float(len(c)) for c in completions]


def sevens(prompts, completions, **columns):
    return [float(c.count("7")) for c in completions]
"""


def eval_config(out, *overrides):
    return load_config(EvalConfig, None, [f"output_dir={out}", *FAST, *overrides])


def read_run(out):
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "results.json", "samples.jsonl"]
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return results, samples


@pytest.fixture
def judges(tmp_path):
    path = tmp_path / "judges.py"
    path.write_text(JUDGES)
    return path


def test_base_model_writes_results_and_samples(tmp_path, judges):
    out = tmp_path / "eval"
    result = run(eval_config(out, "tasks=[exact_match, perplexity, win_rate]", f"win_rate.judge={judges}:shorter"))
    results, samples = read_run(out)
    assert results["metrics"] == result.metrics
    assert set(results["metrics"]) == {
        "exact_match",
        "perplexity",
        "perplexity/nll",
        "win_rate",
        "win_rate/score",
        "win_rate/opponent_score",
    }
    assert results["tasks"] == ["exact_match", "perplexity", "win_rate"]
    assert results["config"]["model"]["path"] == "tiny-llama"
    assert results["counts"]["exact_match"]["examples"] == 8 and results["counts"]["perplexity"]["tokens"] > 8
    assert 1 < results["metrics"]["perplexity"] < 1e4
    assert len(samples) == 8
    for line in samples:
        assert {"index", "prompt", "completion", "reference", "correct", "win", "opponent_completion"} <= set(line)
        assert line["opponent_completion"] == line["reference"]  # win_rate.opponent=reference
        expected = outcomes(torch.tensor([-len(line["completion"])]), torch.tensor([-len(line["reference"])]))
        assert line["win"] == expected.item() and line["judge_score"] == -len(line["completion"])
    assert results["metrics"]["exact_match"] == sum(s["correct"] for s in samples) / 8
    assert results["metrics"]["win_rate"] == pytest.approx(sum(s["win"] for s in samples) / 8)


def zero_reward_model(base, directory):
    """A reward model directory whose score head is all zeros: it scores every text 0, so every pair ties."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    with torch.no_grad():
        model.score.weight.zero_()
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(base).save_pretrained(directory)
    return directory


def test_best_of_n_with_a_reward_model_judge(tmp_path, judges, tiny_llama_path):
    rm = zero_reward_model(tiny_llama_path, tmp_path / "rm")
    out = tmp_path / "eval"
    run(
        eval_config(
            out,
            "tasks=win_rate",
            "generation.mode=best_of_n",
            "generation.n=3",
            f"generation.select_by=[{{name: '{judges}:sevens'}}]",
            f"win_rate.judge=model:{rm}",
        )
    )
    results, samples = read_run(out)
    assert results["metrics"]["win_rate"] == 0.5 and results["counts"]["win_rate"]["ties"] == 8
    for line in samples:
        assert len(line["completions"]) == 3
        assert line["scores"] == [float(c.count("7")) for c in line["completions"]]
        assert line["score"] == max(line["scores"])
        assert line["completion"] == line["completions"][line["scores"].index(line["score"])]


def test_an_sft_run_and_its_merged_export_evaluate_alike(tmp_path):
    from tunekit.recipes.export import ExportConfig, export
    from tunekit.recipes.sft import SFTConfig
    from tunekit.recipes.sft import run as run_sft

    sft = tmp_path / "sft"
    sft_overrides = [f"output_dir={sft}", "model.path=tiny-llama", "train.progress=false", "data.eval_fraction=0"]
    sft_overrides += ["data.synthetic_size=64", "max_steps=16", "train.lr=5e-3", "train.micro_batch_size=8"]
    sft_overrides += ["train.warmup_ratio=0", "train.scheduler=constant"]
    run_sft(load_config(SFTConfig, None, sft_overrides))
    final = sft / "final"
    assert (final / "adapter_config.json").is_file()
    merged = export(ExportConfig(adapter=str(final), output_dir=str(tmp_path / "merged")))

    against_base = [
        "tasks=[exact_match, perplexity, win_rate]",
        "win_rate.judge=format",
        "win_rate.opponent=tiny-llama",
    ]
    adapter = run(eval_config(tmp_path / "eval-adapter", f"model.path={final}", *against_base))
    exported = run(eval_config(tmp_path / "eval-merged", f"model.path={merged}"))
    base = run(eval_config(tmp_path / "eval-base"))
    for result in (adapter, exported, base):
        read_run(result.output_dir)
    completions = {
        name: [s["completion"] for s in r.samples] for name, r in [("a", adapter), ("m", exported), ("b", base)]
    }
    assert completions["a"] == completions["m"]  # the adapter run's final/ and its merged export agree
    assert adapter.metrics["perplexity"] == pytest.approx(exported.metrics["perplexity"], rel=1e-4)
    assert adapter.metrics["exact_match"] == exported.metrics["exact_match"]
    # The opponent model generated exactly what the base model generates when evaluated on its own.
    assert [s["opponent_completion"] for s in adapter.samples] == completions["b"] != completions["a"]
    # A few SFT steps already fit the task's held-out rows much better than the base it started from.
    assert adapter.metrics["perplexity"] < base.metrics["perplexity"] / 2


def test_the_gsm8k_config_runs_on_a_few_questions(tmp_path, shared_data):
    config = load_config(
        EvalConfig,
        RECIPES / "gsm8k-tiny.yaml",
        [
            f"output_dir={tmp_path / 'eval'}",
            "model.path=tiny-llama",
            f"data.path={shared_data / 'gsm8k' / 'test.jsonl'}",
            "data.max_examples=4",
            "generation.max_new_tokens=8",
        ],
    )
    run(config)
    results, samples = read_run(tmp_path / "eval")
    assert results["counts"]["exact_match"]["examples"] == 4 and len(samples) == 4
    assert samples[0]["prompt"].startswith("Question: Janet") and samples[0]["reference"].endswith("#### 18")
    # Perplexity is taken over the reference solutions only: several dozen tokens each, never the questions.
    assert results["counts"]["perplexity"]["tokens"] > 4 * 30


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tasks=[exact_match, perplexty]"], "tasks names an unknown task 'perplexty'; did you mean 'perplexity'?"),
        (["data.path=/no/such/file.jsonl"], "data path '/no/such/file.jsonl' does not exist"),
        (["data.prompt_column=question"], "synthetic row 1: missing column 'question' (data.prompt_column"),
        (["data.answer_column=answer"], "missing column 'answer' (data.answer_column"),
        (["tasks=win_rate"], "win_rate.judge is empty"),
        (["generation.mode=best_of_n", "generation.n=0"], "generation.n must be at least 1"),
        (["generation.mode=best_of_n"], "generation.select_by is empty"),
        (["generation.top_p=0"], "generation.top_p must be in (0, 1]"),
        (["tasks=win_rate", "win_rate.judge=no_such_reward"], "unknown reward 'no_such_reward'"),
        (["generation.modee=greedy"], "unknown config key 'generation.modee'"),
    ],
)
def test_mistakes_exit_2_naming_the_key_before_any_run_directory(tmp_path, capsys, overrides, message):
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main([f"output_dir={out}", *FAST, *overrides]))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("tunekit error: ") and message in last_line
    assert not out.exists()


def test_a_reward_model_as_the_evaluated_model_is_refused(tmp_path, tiny_llama_path):
    rm = zero_reward_model(tiny_llama_path, tmp_path / "rm")
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main([f"output_dir={out}", f"model.path={rm}"]))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE and not out.exists()


def test_a_prompt_learning_adapter_is_refused_before_any_run_directory(tmp_path, tiny_llama_path, capsys):
    """Evaluation merges an adapter into its base; a prompt-tuning adapter has nothing to merge."""
    adapter = tmp_path / "pt-final"
    adapter.mkdir()
    config = {"peft_type": "PROMPT_TUNING", "base_model_name_or_path": tiny_llama_path, "num_virtual_tokens": 4}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main([f"output_dir={out}", f"model.path={adapter}"]))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE and not out.exists()
    assert "holds a prompt_tuning adapter, which cannot be merged" in capsys.readouterr().err


def test_the_command_line_refuses_an_existing_run_directory(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    command = [sys.executable, "-m", "tunekit.recipes.eval", f"output_dir={out}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == USER_ERROR_EXIT_CODE
    assert f"output_dir {out} already holds a run" in done.stderr
    assert (out / "results.json").read_text() == "{}"
