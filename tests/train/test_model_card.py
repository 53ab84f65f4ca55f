"""final/README.md, the model card every training run writes, and the one export writes for a merged model.

Two tiny SFT runs (a LoRA adapter, and full fine-tuning from a local base folder with a licence) and one reward run
are shared by the tests; everything else calls the card builder directly. Nothing here reaches the Hub.
"""

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import tunekit.recipes.sft as sft_recipe
from tunekit.config import load_config, to_dict
from tunekit.models.tiny import tiny_model_path
from tunekit.recipes.common import parse_args
from tunekit.recipes.export import ExportConfig, export
from tunekit.recipes.reward import RewardConfig
from tunekit.recipes.reward import run as run_reward
from tunekit.recipes.sft import SFTConfig
from tunekit.train import card as card_module
from tunekit.train.card import RecipeCard, front_matter, with_model_card
from tunekit.train.card_facts import base_metadata, best_direction, held_out_metrics, hub_model_id, is_hub_dataset
from tunekit.train.log import read_metrics

SHORT = [
    "train.progress=false",
    "data.synthetic_size=64",
    "train.micro_batch_size=8",
    "train.eval_every=2",
    "max_steps=4",
]
IDS = torch.tensor([[1, 20, 30, 40, 50, 60, 70]])


def run_and_keep_model(config):
    """Run SFT and return the trained model object itself (the runner trains it in place on the CPU)."""
    kept = {}
    real = sft_recipe.train

    def train(spec, model, step_fn):
        kept["model"] = model
        return real(spec, model, step_fn)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sft_recipe, "train", train)
        sft_recipe.run(config)
    return kept["model"].eval()


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "lora"
    config = load_config(SFTConfig, None, [f"output_dir={out}", *SHORT])
    return out, config, run_and_keep_model(config)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("card-full")
    base = root / "licensed-base"
    shutil.copytree(tiny_model_path("tiny-llama"), base)
    (base / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n\n# A base model\n")
    out = root / "full"
    overrides = [f"output_dir={out}", f"model.path={base}", "model.adapter.method=full", *SHORT, "max_steps=2"]
    config = load_config(SFTConfig, None, overrides)
    return out, config, run_and_keep_model(config)


def card_of(folder: Path) -> tuple[dict, str]:
    """(front matter, body) of ``folder/README.md``."""
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def section(body: str, title: str) -> str:
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", body, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def snippet(body: str) -> str:
    return re.search(r"^## Load\n.*?```python\n(.*?)```", body, re.S | re.M).group(1)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_adapter_card_front_matter_and_sections(adapter_run):
    out, config, _ = adapter_run
    meta, body = card_of(out / "final")
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["tunekit", "sft", "lora"]
    # The embedded base is no Hub model and the data is generated: neither may appear where the Hub reads ids.
    assert "base_model" not in meta and "datasets" not in meta and "license" not in meta
    assert "`tiny-llama` (tunekit's embedded model" in body
    method = section(body, "Method")
    assert "| rank (r) | 8 |" in method and "| alpha | 16 |" in method and "| dropout | 0.0 |" in method
    assert "q_proj" in method and "74,752" in method  # the adapter's parameters on tiny-llama
    data = section(body, "Data")
    assert "data (train): 64 rows -> 64 examples" in data and "data (eval): " in data
    training = section(body, "Training")
    assert "| optimizer steps | 4 (max_steps 4) |" in training and "| seed | 0 |" in training
    assert "0.001, cosine schedule" in training


def test_held_out_results_are_metrics_jsonl_final_and_best(adapter_run):
    out, _, _ = adapter_run
    _, body = card_of(out / "final")
    history = read_metrics(out / "metrics.jsonl")
    losses = [(r["step"], r["eval/loss"]) for r in history if "eval/loss" in r]
    assert [s for s, _ in losses] == [0, 2, 4]
    row = re.search(r"^\| `eval/loss` \| (.*) \|$", section(body, "Held-out results"), re.M).group(1)
    cells = [re.fullmatch(r"(\S+) \(step (\d+)\)", c.strip()).groups() for c in row.split("|")]
    (first, s0), (final, s1), (best, s2) = [(float(v), int(s)) for v, s in cells]
    assert (s0, first) == (losses[0][0], pytest.approx(losses[0][1], rel=1e-5))
    assert (s1, final) == (losses[-1][0], pytest.approx(losses[-1][1], rel=1e-5))
    lowest = min(losses, key=lambda p: p[1])  # a loss: lower is better
    assert (s2, best) == (lowest[0], pytest.approx(lowest[1], rel=1e-5))
    assert "lowest value for losses" in section(body, "Held-out results")


def test_the_best_value_rule():
    history = [
        {"step": 0, "eval/loss": 2.0, "eval/accuracy": 0.5, "eval/reward_std": 1.0, "eval/kl": 0.0},
        {"step": 5, "eval/loss": 1.0, "eval/accuracy": 0.9, "eval/reward_std": 3.0, "eval/kl": 0.2},
        {"step": 9, "loss": 0.1, "eval/loss": 1.5, "eval/accuracy": 0.9, "eval/reward_std": 2.0, "eval/kl": 0.1},
        {"step": 10, "eval/greedy/task/math_correct": 0.25},
    ]
    got = {m.key: m for m in held_out_metrics(history)}
    assert list(got) == ["eval/loss", "eval/accuracy", "eval/reward_std", "eval/kl", "eval/greedy/task/math_correct"]
    assert got["eval/loss"].best == (5, 1.0) and got["eval/loss"].final == (9, 1.5)
    assert got["eval/accuracy"].best == (5, 0.9)  # a tie goes to the step that reached it first
    assert got["eval/kl"].best == (0, 0.0)
    assert got["eval/reward_std"].best is None and got["eval/reward_std"].final == (9, 2.0)
    assert got["eval/greedy/task/math_correct"].first == got["eval/greedy/task/math_correct"].best == (10, 0.25)
    assert [best_direction(k) for k in ("eval/perplexity", "eval/rewards/margin", "eval/logps/chosen")] == [
        "min",
        "max",
        None,
    ]


def test_charts_are_copied_beside_the_card_and_linked(adapter_run):
    out, _, _ = adapter_run
    _, body = card_of(out / "final")
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "loss.png" in plots
    for name in plots:
        assert (out / "final" / name).read_bytes() == (out / "plots" / name).read_bytes()
        assert f"]({name})" in section(body, "Charts")


def test_the_loading_snippet_gives_the_runs_logits(adapter_run):
    out, _, model = adapter_run
    _, body = card_of(out / "final")
    code = snippet(body)
    assert f'folder = "{out / "final"}"' in code and "PeftModel.from_pretrained(base, folder)" in code
    assert "import tunekit" not in code and "from tunekit" not in code
    scope: dict = {}
    exec(code, scope)
    torch.testing.assert_close(logits(scope["model"].eval()), logits(model), rtol=1e-5, atol=1e-5)
    assert scope["tokenizer"]("2 + 2")["input_ids"]


def test_the_reproduce_command_reads_back_the_same_config(adapter_run):
    out, config, _ = adapter_run
    _, body = card_of(out / "final")
    command = re.search(r"^## Reproduce\n.*?```bash\n(.*?)\n```", body, re.S | re.M).group(1)
    words = command.split()
    assert words[:3] == ["python", "-m", "tunekit.recipes.sft"]
    again = parse_args(SFTConfig, words[3:], "sft")
    assert again.output_dir == f"{out}-again" and not Path(again.output_dir).exists()
    assert to_dict(again) == {**to_dict(config), "output_dir": f"{out}-again"}


def test_full_fine_tuning_card(full_run):
    out, config, model = full_run
    meta, body = card_of(out / "final")
    assert meta["library_name"] == "transformers" and meta["tags"] == ["tunekit", "sft", "full-fine-tuning"]
    assert meta["license"] == "mit"  # from the local base folder's README front matter
    assert "base_model" not in meta  # a local folder: only Hub ids may go there
    assert "A fully fine-tuned model" in body and "every weight of the model" in section(body, "Method")
    code = snippet(body)
    assert "AutoModelForCausalLM.from_pretrained(folder)" in code and "peft" not in code
    scope: dict = {}
    exec(code, scope)
    torch.testing.assert_close(logits(scope["model"].eval()), logits(model), rtol=1e-5, atol=1e-5)


def test_hub_ids_go_into_the_front_matter_and_local_paths_do_not(tmp_path):
    local = tmp_path / "rows.jsonl"
    local.write_text('{"prompt": "a", "completion": "b"}\n')
    values = to_dict(load_config(SFTConfig, None, ["data.path=HuggingFaceH4/no_robots", "data.eval_path=openai/gsm8k"]))
    meta = front_matter("sft", values, "lora", "causal-lm", "meta-llama/Llama-3.1-8B")
    assert meta["datasets"] == ["HuggingFaceH4/no_robots", "openai/gsm8k"]
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B"
    for path in ("synthetic", str(local), "data/train.jsonl", "./my_data", "/abs/dir", "~/data"):
        assert not is_hub_dataset(path), path
        values["data"].update(path=path, eval_path=None)
        assert "datasets" not in front_matter("sft", values, "lora", "causal-lm", "gpt2")
    assert is_hub_dataset("gsm8k") and hub_model_id("gpt2") == "gpt2"
    assert hub_model_id("tiny-llama") is None and hub_model_id(str(tmp_path)) is None
    # A folder inside the Hub cache stands for its repository.
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_model_id(str(snapshot)) == "Qwen/Qwen2.5-0.5B"
    values["model"]["quantization"] = "4bit"
    assert front_matter("sft", values, "lora", "causal-lm", "gpt2")["tags"] == ["tunekit", "sft", "lora", "qlora"]


def test_licence_and_base_model_read_from_a_local_base_folder(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text(
        "---\nlicense: other\nlicense_name: llama3.1\nlicense_link: LICENSE\nbase_model: meta-llama/Llama-3.1-8B\n---\n"
    )
    assert base_metadata(str(base))["license_name"] == "llama3.1"
    values = to_dict(load_config(SFTConfig, None, []))
    meta = front_matter("dpo", values, "dora", "causal-lm", str(base))
    # A run started from a local folder that is itself a fine-tune of a Hub model points at that model.
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B"
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "llama3.1", "LICENSE")
    (base / "README.md").write_text("# no front matter\n")
    assert "license" not in front_matter("dpo", values, "dora", "causal-lm", str(base))


def test_export_card_carries_the_adapter_runs_results(adapter_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _, _ = adapter_run
    merged = export(ExportConfig(adapter=str(out / "final"), output_dir=str(tmp_path / "merged")))
    meta, body = card_of(merged)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"][:3] == ["tunekit", "export", "sft"] and "base_model" not in meta
    assert "the merge of the adapter" in body and str(out / "final") in body
    _, run_body = card_of(out / "final")
    assert section(body, "Held-out results").strip() == section(run_body, "Held-out results").strip()
    assert (merged / "loss.png").read_bytes() == (out / "plots" / "loss.png").read_bytes()
    command = re.search(r"```bash\n(python -m tunekit.recipes.export .*?)\n```", body).group(1)
    assert command == f"python -m tunekit.recipes.export adapter={out / 'final'} output_dir={merged}"
    scope: dict = {}
    exec(snippet(body), scope)
    base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path("tiny-llama")), out / "final")
    torch.testing.assert_close(logits(scope["model"].eval()), logits(base.eval()), rtol=1e-5, atol=1e-5)


def test_reward_card_loads_the_score_head_and_scores_like_tunekit(tmp_path):
    from tunekit.models.reward import RewardScorer

    out = tmp_path / "reward"
    overrides = ["train.progress=false", "data.synthetic_size=16", "train.micro_batch_size=4", "max_steps=2"]
    run_reward(load_config(RewardConfig, None, [f"output_dir={out}", *overrides]))
    meta, body = card_of(out / "final")
    assert meta["pipeline_tag"] == "text-classification" and meta["tags"] == ["tunekit", "reward", "lora"]
    assert "| `eval/accuracy` |" in section(body, "Held-out results")
    code = snippet(body)
    assert "num_labels=1" in code
    scoring = re.search(r"pad_token_id`.*?```python\n(.*?)```", body, re.S).group(1)
    scope: dict = {}
    exec(code + "\n" + scoring, scope)
    text = "Question: What is 2 + 2?\nAnswer: 4" + scope["tokenizer"].eos_token
    expected = RewardScorer.from_pretrained(out / "final").score_texts([text])[0]
    assert float(scope["score"]) == pytest.approx(expected, abs=1e-5)


def test_a_card_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch, caplog):
    saved = []

    def save(model, directory, **kwargs):
        saved.append((directory, kwargs))

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(card_module, "render_run_card", broken)
    wrapped = with_model_card(save, RecipeCard("sft", "about"), load_config(SFTConfig, None, []), tmp_path)
    with caplog.at_level(logging.WARNING, logger="tunekit.train.card"):
        wrapped(None, tmp_path / ".final-tmp", state_dict={"w": 1})
    assert saved == [(tmp_path / ".final-tmp", {"state_dict": {"w": 1}})]  # the weights are saved all the same
    assert "model card could not be written" in caplog.text and "disk on fire" in caplog.text
