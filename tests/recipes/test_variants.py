"""The model, precision and data-source options of the shared pieces, each for a couple of steps."""

import pytest
import torch

from tunekit.config import load_config
from tunekit.recipes.reward import RewardConfig
from tunekit.recipes.reward import run as run_reward
from tunekit.recipes.sft import SFTConfig, run

SHORT = [
    "train.progress=false",
    "data.synthetic_size=32",
    "data.eval_fraction=0",
    "max_steps=2",
    "train.micro_batch_size=4",
]


def sft(tmp_path, *overrides):
    return run(load_config(SFTConfig, None, [f"output_dir={tmp_path / 'run'}", *SHORT, *overrides]))


def test_tiny_mistral_with_named_target_modules(tmp_path):
    sft(tmp_path, "model.path=tiny-mistral", "model.adapter.target_modules=[q_proj,v_proj]")
    import json

    config = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_bf16_weights_autocast_and_gradient_checkpointing(tmp_path):
    result = sft(
        tmp_path,
        "model.dtype=bf16",
        "train.mixed_precision=bf16",
        "model.gradient_checkpointing=true",
        "train.scheduler=linear",
    )
    assert all(r["loss"] == r["loss"] and r["grad_norm"] > 0 for r in result.history)


def test_8bit_base_with_8bit_adamw(tmp_path):
    result = sft(tmp_path, "model.quantization=8bit", "train.optimizer=adamw_8bit")
    assert result.step == 2


def test_saved_dataset_directory(tmp_path):
    from datasets import Dataset, DatasetDict

    from tunekit.data import synthetic

    DatasetDict({"train": Dataset.from_list(synthetic.sft_examples(16))}).save_to_disk(str(tmp_path / "ds"))
    result = sft(tmp_path, f"data.path={tmp_path / 'ds'}")
    assert result.step == 2


@pytest.mark.parametrize(
    "extra",
    [["model.adapter.method=dora"], ["model.quantization=4bit"], ["model.adapter.method=full"]],
    ids=["dora", "qlora", "full"],
)
def test_reward_model_adapter_methods(tmp_path, extra):
    result = run_reward(load_config(RewardConfig, None, [f"output_dir={tmp_path / 'rm'}", *SHORT, *extra]))
    assert result.step == 2
    final = tmp_path / "rm" / "final"
    from tunekit.models.reward import RewardScorer

    if "model.adapter.method=full" not in extra:
        scores = RewardScorer.from_pretrained(final).score(["Question: 1 + 1?\nAnswer:"], [" 2"])
        assert len(scores) == 1 and torch.isfinite(torch.tensor(scores)).all()
