"""Every YAML config shipped under recipes/ parses against its recipe's schema and names its command."""

from pathlib import Path

import pytest

from tunekit.config import load_config
from tunekit.recipes.distill import DistillConfig
from tunekit.recipes.dpo import DPOConfig
from tunekit.recipes.eval import EvalConfig
from tunekit.recipes.generate import GenerateConfig
from tunekit.recipes.grpo import GRPOConfig
from tunekit.recipes.kto import KTOConfig
from tunekit.recipes.ppo import PPOConfig
from tunekit.recipes.pretrain import PretrainConfig
from tunekit.recipes.reward import RewardConfig
from tunekit.recipes.sft import SFTConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SCHEMAS = {
    "sft": SFTConfig,
    "pretrain": PretrainConfig,
    "reward": RewardConfig,
    "dpo": DPOConfig,
    "kto": KTOConfig,
    "grpo": GRPOConfig,
    "ppo": PPOConfig,
    "eval": EvalConfig,
    "distill": DistillConfig,
    "generate": GenerateConfig,
}
CONFIGS = sorted(p for name in SCHEMAS for p in (RECIPES / name).glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_config_parses_and_states_its_command(path):
    load_config(SCHEMAS[path.parent.name], path)
    header = path.read_text().splitlines()[:4]
    assert any(f"tunekit.recipes.{path.parent.name}" in line for line in header if line.startswith("#"))


def test_gsm8k_config_trains_a_few_steps(tmp_path, shared_data):
    from tunekit.recipes.sft import run

    path = RECIPES / "sft" / "gsm8k-tiny.yaml"
    config = load_config(
        SFTConfig,
        path,
        [
            f"output_dir={tmp_path / 'run'}",
            "max_steps=2",
            "train.progress=false",
            f"data.path={shared_data / 'gsm8k' / 'train.jsonl'}",
            "data.eval_path=null",
            "data.max_examples=64",
        ],
    )
    result = run(config)
    assert result.step == 2
