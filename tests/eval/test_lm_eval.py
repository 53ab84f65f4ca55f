"""lm-evaluation-harness tasks in the eval recipe (tunekit/eval/lm_eval.py), offline: the shipped local GSM8K task
on the tiny model, on an SFT run's adapter and on its merged export; mistakes exit 2 before a run directory exists.

These tests need the optional extra: pip install "tunekit[lm-eval]".
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from tunekit.config import load_config
from tunekit.errors import USER_ERROR_EXIT_CODE, exit_on_user_error
from tunekit.recipes.eval import EvalConfig, main, run

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "recipes" / "eval" / "lm_eval_tasks"
TASK = "gsm8k_local"
LIMIT = 3
# Three test questions, zero-shot, short generations: seconds on the tiny model.
FAST = [f"lm_eval.include_path={TASKS}", f"lm_eval.limit={LIMIT}", "lm_eval.num_fewshot=0"]
FAST += ["lm_eval.gen_kwargs={max_gen_toks: 24}", "data.synthetic_size=8", "generation.max_new_tokens=8"]
STRICT = f"lm_eval/{TASK}/exact_match,strict-match"


@pytest.fixture
def at_repo_root(monkeypatch, shared_data):
    """The shipped task reads ../shared/data/gsm8k by a path relative to the working directory: the repo root."""
    monkeypatch.chdir(REPO)
    return shared_data


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt, refused and recorded: an offline evaluation makes none."""
    attempts: list[object] = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def evaluate(out: Path, *overrides: str):
    result = run(load_config(EvalConfig, None, [f"output_dir={out}", *FAST, *overrides]))
    samples = [json.loads(line) for line in (out / "lm_eval_samples.jsonl").read_text().splitlines()]
    assert json.loads((out / "results.json").read_text()) == result.record
    return result.record, samples


def strict_lines(samples: list[dict]) -> list[dict]:
    lines = [s for s in samples if s["task"] == TASK and s["filter"] == "strict-match"]
    assert [s["doc_id"] for s in lines] == list(range(LIMIT))
    return lines


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """An SFT run's final/ (a LoRA adapter on tiny-llama, trained on "Question: ...\\nAnswer: a + b = c. #### c"
    rows) and its merged export."""
    from tunekit.recipes.export import ExportConfig, export
    from tunekit.recipes.sft import SFTConfig
    from tunekit.recipes.sft import run as run_sft

    root = tmp_path_factory.mktemp("lm-eval-sft")
    overrides = [f"output_dir={root / 'sft'}", "model.path=tiny-llama", "train.progress=false", "data.eval_fraction=0"]
    overrides += ["data.synthetic_size=64", "max_steps=16", "train.lr=5e-3", "train.micro_batch_size=8"]
    overrides += ["train.warmup_ratio=0", "train.scheduler=constant"]
    run_sft(load_config(SFTConfig, None, overrides))
    final = root / "sft" / "final"
    merged = export(ExportConfig(adapter=str(final), output_dir=str(root / "merged")))
    return final, Path(merged)


def test_the_tiny_model_runs_the_local_gsm8k_task_offline(tmp_path, at_repo_root, no_network, tiny_llama_path):
    import lm_eval

    out = tmp_path / "eval"
    record, samples = evaluate(out, f"tasks=[exact_match, lm_eval:{TASK}]")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "lm_eval_samples.jsonl",
        "results.json",
        "samples.jsonl",
    ]
    assert record["tasks"] == ["exact_match", f"lm_eval:{TASK}"]
    metrics = record["metrics"]
    assert {"exact_match", STRICT, f"lm_eval/{TASK}/exact_match,flexible-extract"} <= set(metrics)
    for name, value in metrics.items():
        assert 0 <= value <= 1, name
    assert record["counts"][f"lm_eval:{TASK}"] == {"examples": LIMIT, "available": 1319}
    assert record["counts"]["exact_match"]["examples"] == 8  # tunekit's own task kept its own data

    kept = record["lm_eval"]
    assert kept["version"] == lm_eval.__version__ and kept["limit"] == LIMIT and kept["num_fewshot"] == 0
    assert kept["tasks"][TASK]["num_fewshot"] == 0 and kept["tasks"][TASK]["version"] == 1.0
    assert kept["tasks"][TASK]["dataset"] == "json"
    # The embedded model's name became its local folder; nothing came from the Hub.
    assert kept["model_args"]["pretrained"] == tiny_llama_path and "peft" not in kept["model_args"]
    assert no_network == []

    lines = strict_lines(samples)
    assert lines[0]["prompt"].startswith("Question: Janet") and lines[0]["prompt"].endswith("\nAnswer:")
    assert lines[0]["target"].endswith("#### 18")
    # lm-eval's score is the mean of its per-document scores.
    assert metrics[STRICT] == pytest.approx(sum(s["exact_match"] for s in lines) / LIMIT)


def test_an_adapter_run_and_its_merged_export_score_alike_and_unlike_the_base(tmp_path, at_repo_root, sft_run):
    final, merged = sft_run
    runs = {
        name: evaluate(tmp_path / name, f"model.path={path}", f"tasks=lm_eval:{TASK}")
        for name, path in [("adapter", final), ("merged", merged), ("base", "tiny-llama")]
    }
    adapter_args = runs["adapter"][0]["lm_eval"]["model_args"]
    base_recorded = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    # The adapter went to lm-eval's HFLM as peft=, on the base it records, with the run's own tokenizer.
    assert adapter_args["peft"] == str(final.resolve()) and adapter_args["pretrained"] == base_recorded
    assert adapter_args["tokenizer"] == str(final)
    assert runs["merged"][0]["lm_eval"]["model_args"]["pretrained"] == str(merged)

    responses = {name: [s["response"] for s in strict_lines(samples)] for name, (_, samples) in runs.items()}
    extracted = {name: [s["filtered"] for s in strict_lines(samples)] for name, (_, samples) in runs.items()}
    assert responses["adapter"] == responses["merged"]  # peft= on the base generates what the merged model does
    assert runs["adapter"][0]["metrics"] == runs["merged"][0]["metrics"]
    # The adapter is applied: it answers in the short "#### N" format it was trained on (16 steps teach it on most
    # questions), where the random base model produces no "####" at all.
    assert sum(e != ["[invalid]"] for e in extracted["adapter"]) >= 2 and extracted["base"] == [["[invalid]"]] * LIMIT
    assert all(a != b for a, b in zip(responses["adapter"], responses["base"], strict=True))
    counts = {f"lm_eval:{TASK}": {"examples": LIMIT, "available": 1319}}
    assert runs["adapter"][0]["counts"] == runs["base"][0]["counts"] == counts


ROWS_TASK = """
task: rows
dataset_path: json
dataset_kwargs:
  data_files:
    test: ROWS
output_type: generate_until
test_split: test
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs: {until: ["Question:"], do_sample: false, max_gen_toks: 16}
metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
"""


def test_lm_eval_generates_what_tunekit_generates_for_the_same_prompts(tmp_path, sft_run):
    """Two evaluators, one model: lm-eval's HFLM with peft= on the base, and tunekit's own generation (the adapter
    merged, its fast paths on), given the same 16 prompts, produce the same greedy completions."""
    final, _ = sft_run
    overrides = [f"model.path={final}", "tasks=exact_match", "data.synthetic_size=16", "generation.max_new_tokens=16"]
    own = run(load_config(EvalConfig, None, [f"output_dir={tmp_path / 'own'}", *overrides]))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": s["prompt"], "answer": s["reference"]}) + "\n" for s in own.samples))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rows.yaml").write_text(ROWS_TASK.replace("ROWS", str(rows)))
    out = tmp_path / "lm"
    overrides = [f"output_dir={out}", f"model.path={final}", "tasks=lm_eval:rows", f"lm_eval.include_path={tasks}"]
    lm = run(load_config(EvalConfig, None, overrides))
    lines = [json.loads(line) for line in (out / "lm_eval_samples.jsonl").read_text().splitlines()]
    assert [line["prompt"] for line in lines] == [s["prompt"] for s in own.samples]
    assert [line["response"][0][0] for line in lines] == [s["completion"] for s in own.samples]
    assert lm.record["counts"] == {"lm_eval:rows": {"examples": 16, "available": 16}}


def test_an_adapter_on_an_adapter_run_is_merged_and_evaluated(tmp_path, at_repo_root, sft_run):
    """A run started from an earlier run's final/ records that final/ as its base: more than HFLM's one peft=
    loads, so tunekit merges the chain. A LoRA adapter with its B matrices at zero changes nothing, so the chain
    generates what the first adapter does."""
    from peft import LoraConfig, get_peft_model

    from tunekit.models.load import ModelConfig, load_model

    final, merged = sft_run
    chain = tmp_path / "chain"
    model = load_model(ModelConfig(path=str(final)))
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(chain)
    config = json.loads((chain / "adapter_config.json").read_text())
    (chain / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(final)}))

    chained, chained_samples = evaluate(tmp_path / "eval-chain", f"model.path={chain}", f"tasks=lm_eval:{TASK}")
    direct, direct_samples = evaluate(tmp_path / "eval-merged", f"model.path={merged}", f"tasks=lm_eval:{TASK}")
    assert "adapter chain" in chained["lm_eval"]["model_args"]["pretrained"]
    assert [s["response"] for s in strict_lines(chained_samples)] == [
        s["response"] for s in strict_lines(direct_samples)
    ]
    assert chained["metrics"] == direct["metrics"]


def refused(out: Path, capsys, *overrides: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main([f"output_dir={out}", *FAST, *overrides]))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    assert not out.exists()
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("tunekit error: ")
    return last_line


def test_without_lm_eval_installed_an_lm_eval_task_is_refused(tmp_path, capsys, monkeypatch):
    # None in sys.modules makes an import fail as if the package were not installed.
    for name in ["lm_eval", *(m for m in sys.modules if m.startswith("lm_eval."))]:
        monkeypatch.setitem(sys.modules, name, None)
    message = refused(tmp_path / "eval", capsys, f"tasks=[exact_match, lm_eval:{TASK}]")
    assert f"tasks names lm_eval:{TASK}, which needs lm-evaluation-harness" in message
    assert 'pip install "tunekit[lm-eval]"' in message


def test_an_unknown_lm_eval_task_is_refused_naming_the_closest(tmp_path, capsys):
    message = refused(tmp_path / "eval", capsys, "tasks=[exact_match, lm_eval:gsm8k_locl]")
    assert "tasks names an unknown lm-eval task 'lm_eval:gsm8k_locl'; did you mean 'lm_eval:gsm8k_local'?" in message


def test_a_task_whose_data_file_is_missing_is_refused_before_the_model_loads(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    text = (TASKS / f"{TASK}.yaml").read_text().replace("../shared/data/gsm8k/test.jsonl", "no/such/test.jsonl")
    (tasks / f"{TASK}.yaml").write_text(text)
    message = refused(tmp_path / "eval", capsys, f"tasks=lm_eval:{TASK}", f"lm_eval.include_path={tasks}")
    # Found before the model loads where lm-eval indexes task configs (0.4.13), else when the task loads.
    assert "no/such/test.jsonl" in message and "taken from the working directory" in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tasks=['lm_eval:']"], "tasks names 'lm_eval:' without a task"),
        ([f"tasks=lm_eval:{TASK}", "lm_eval.include_path=/no/such/folder"], "is not a folder of task YAMLs"),
        ([f"tasks=lm_eval:{TASK}", "lm_eval.limit=0"], "lm_eval.limit must be at least 1"),
        ([f"tasks=lm_eval:{TASK}", "model.quantization=4bit"], "model.quantization=4bit does not reach lm-eval"),
    ],
)
def test_lm_eval_settings_mistakes_exit_2(tmp_path, capsys, overrides, message):
    assert message in refused(tmp_path / "eval", capsys, *overrides)
