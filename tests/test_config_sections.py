"""Each config section checks its own values when it is built; the loader names the full dotted key at fault."""

from __future__ import annotations

from typing import Any

import pytest

from tunekit.config import load_config
from tunekit.data.pairs import PairDataConfig
from tunekit.data.prompts import PromptDataConfig
from tunekit.data.sft import DataConfig
from tunekit.data.sources import SourceConfig
from tunekit.errors import ConfigError, InvalidValue
from tunekit.eval.data import EvalDataConfig
from tunekit.eval.sampling import GenerationConfig
from tunekit.eval.tasks import ExactMatchConfig, WinRateConfig
from tunekit.models.adapters import AdapterConfig
from tunekit.models.load import ModelConfig
from tunekit.recipes.eval import EvalConfig
from tunekit.recipes.sft import SFTConfig
from tunekit.rl.rewards import RewardSource
from tunekit.rl.rollout import SamplingConfig
from tunekit.train.spec import TrainConfig

SECTIONS = [
    SourceConfig,
    DataConfig,
    PairDataConfig,
    PromptDataConfig,
    EvalDataConfig,
    SamplingConfig,
    GenerationConfig,
    ExactMatchConfig,
    WinRateConfig,
    AdapterConfig,
    ModelConfig,
    TrainConfig,
    EvalConfig,
]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.__name__)
def test_defaults_pass(section):
    section()


# (section, field values, the key at fault, the message after it)
REFUSED: list[tuple[type, dict[str, Any], str, str]] = [
    (TrainConfig, {"lr": 0.0}, "lr", "must be positive, got 0.0"),
    (TrainConfig, {"lr": -1.0}, "lr", "must be positive, got -1.0"),
    (TrainConfig, {"micro_batch_size": 0}, "micro_batch_size", "must be at least 1, got 0"),
    (TrainConfig, {"grad_accum_steps": 0}, "grad_accum_steps", "must be at least 1, got 0"),
    (TrainConfig, {"epochs": 0}, "epochs", "must be at least 1, got 0"),
    (TrainConfig, {"weight_decay": -0.1}, "weight_decay", "must be 0 or more, got -0.1"),
    (TrainConfig, {"warmup_ratio": 1.0}, "warmup_ratio", "must be in [0, 1), got 1.0"),
    (TrainConfig, {"warmup_ratio": -0.1}, "warmup_ratio", "must be in [0, 1), got -0.1"),
    (TrainConfig, {"log_every": 0}, "log_every", "must be at least 1, got 0"),
    (TrainConfig, {"eval_every": -1}, "eval_every", "must be 0 or more, got -1"),
    (TrainConfig, {"save_every": -1}, "save_every", "must be 0 or more, got -1"),
    (TrainConfig, {"keep_checkpoints": -1}, "keep_checkpoints", "must be 0 or more, got -1"),
    (TrainConfig, {"max_bad_steps": 0}, "max_bad_steps", "must be at least 1, got 0"),
    (TrainConfig, {"spike_factor": -1.0}, "spike_factor", "must be 0 (off) or more, got -1.0"),
    (TrainConfig, {"pad_to_multiple_of": 0}, "pad_to_multiple_of", "must be at least 1, got 0"),
    (SourceConfig, {"path": " "}, "path", "is empty"),
    (SourceConfig, {"eval_fraction": 1.0}, "eval_fraction", "must be in [0, 1), got 1.0"),
    (SourceConfig, {"synthetic_size": 0}, "synthetic_size", "must be at least 1, got 0"),
    (SourceConfig, {"max_examples": 0}, "max_examples", "must be at least 1 (or null for all), got 0"),
    (DataConfig, {"max_length": 0}, "max_length", "must be at least 1, got 0"),
    (DataConfig, {"prompt_template": "Q: "}, "prompt_template", "'Q: ' must contain {prompt}"),
    (DataConfig, {"eval_fraction": -0.5}, "eval_fraction", "must be in [0, 1), got -0.5"),
    (PairDataConfig, {"max_length": 0}, "max_length", "must be at least 1, got 0"),
    (PairDataConfig, {"max_prompt_length": 0}, "max_prompt_length", "must be at least 1 (or null for no limit), got 0"),
    (PromptDataConfig, {"max_prompt_length": 0}, "max_prompt_length", "must be at least 1, got 0"),
    (PromptDataConfig, {"max_eval_examples": -1}, "max_eval_examples", "must be 0 or more (or null for all), got -1"),
    (EvalDataConfig, {"synthetic_size": 0}, "synthetic_size", "must be at least 1, got 0"),
    (EvalDataConfig, {"max_examples": 0}, "max_examples", "must be at least 1 (or null for all), got 0"),
    (EvalDataConfig, {"max_length": 0}, "max_length", "must be at least 1, got 0"),
    (EvalDataConfig, {"max_prompt_length": 0}, "max_prompt_length", "must be at least 1, got 0"),
    (EvalDataConfig, {"prompt_template": "x"}, "prompt_template", "'x' must contain {prompt}"),
    (SamplingConfig, {"num_generations": 0}, "num_generations", "must be at least 1, got 0"),
    (SamplingConfig, {"max_new_tokens": 0}, "max_new_tokens", "must be at least 1, got 0"),
    (SamplingConfig, {"temperature": -0.5}, "temperature", "must be 0 (greedy) or more, got -0.5"),
    (SamplingConfig, {"top_k": -1}, "top_k", "must be 0 (off) or more, got -1"),
    (SamplingConfig, {"top_p": 0.0}, "top_p", "must be in (0, 1], got 0.0"),
    (SamplingConfig, {"top_p": 1.5}, "top_p", "must be in (0, 1], got 1.5"),
    (GenerationConfig, {"temperature": -1.0}, "temperature", "must be 0 (greedy) or more, got -1.0"),
    (GenerationConfig, {"n": 0}, "n", "must be at least 1, got 0"),
    (ExactMatchConfig, {"checker": ""}, "checker", "is empty"),
    (WinRateConfig, {"tie_margin": -0.1}, "tie_margin", "must be 0 or more, got -0.1"),
    (AdapterConfig, {"r": 0}, "r", "must be at least 1, got 0"),
    (AdapterConfig, {"alpha": 0}, "alpha", "must be positive, got 0"),
    (AdapterConfig, {"dropout": 1.0}, "dropout", "must be in [0, 1), got 1.0"),
    (AdapterConfig, {"dropout": -0.1}, "dropout", "must be in [0, 1), got -0.1"),
    (AdapterConfig, {"num_virtual_tokens": 0}, "num_virtual_tokens", "must be at least 1, got 0"),
    (AdapterConfig, {"adapter_layers": 0}, "adapter_layers", "must be at least 1 (or null for every layer), got 0"),
    (ModelConfig, {"path": ""}, "path", "is empty"),
    (ModelConfig, {"revision": ""}, "revision", "is empty"),
    (EvalConfig, {"batch_size": 0}, "batch_size", "must be at least 1, got 0"),
    (EvalConfig, {"tasks": []}, "tasks", "is empty"),
    (EvalConfig, {"tasks": "exact_matc"}, "tasks", "names an unknown task 'exact_matc'; did you mean 'exact_match'?"),
    (EvalConfig, {"tasks": "win_rate"}, "win_rate.judge", "is empty: the win_rate task needs a reward model"),
    (
        EvalConfig,
        {"generation": GenerationConfig(mode="best_of_n")},
        "generation.select_by",
        "is empty: generation.mode=best_of_n needs",
    ),
]


@pytest.mark.parametrize(("section", "values", "key", "message"), REFUSED, ids=lambda v: str(v))
def test_a_value_out_of_range_is_refused_naming_its_key(section, values, key, message):
    with pytest.raises(InvalidValue) as refused:
        section(**values)
    assert refused.value.key == key
    assert refused.value.message.startswith(message)
    assert isinstance(refused.value, ValueError)  # code building a section by hand gets an ordinary ValueError


@pytest.mark.parametrize(
    ("section", "values"),
    [
        (TrainConfig, {"lr": 1e-12, "warmup_ratio": 0.0, "eval_every": 0, "save_every": 0, "keep_checkpoints": 0}),
        (TrainConfig, {"warmup_ratio": 0.999, "spike_factor": 0.0, "weight_decay": 0.0, "max_grad_norm": -1.0}),
        (SourceConfig, {"eval_fraction": 0.0, "synthetic_size": 1, "max_examples": 1}),
        (PromptDataConfig, {"max_eval_examples": 0}),
        (PairDataConfig, {"max_prompt_length": None}),
        (SamplingConfig, {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "num_generations": 1}),
        (AdapterConfig, {"dropout": 0.0, "r": 1, "alpha": 1}),
        (EvalConfig, {"tasks": "perplexity", "generation": GenerationConfig(mode="best_of_n")}),  # no generation
        (EvalConfig, {"tasks": ["win_rate"], "win_rate": WinRateConfig(judge="math_correct")}),
        (EvalConfig, {"generation": GenerationConfig(mode="best_of_n", select_by=[RewardSource("math_correct")])}),
    ],
    ids=lambda v: str(v),
)
def test_the_edges_of_each_range_are_accepted(section, values):
    section(**values)


def test_the_loader_names_the_full_dotted_key():
    with pytest.raises(ConfigError, match=r"^train\.lr must be positive, got -1\.0$"):
        load_config(SFTConfig, None, ["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"^model\.adapter\.alpha must be positive, got 0$"):
        load_config(SFTConfig, None, ["model.adapter.alpha=0"])
    with pytest.raises(ConfigError, match=r"^generation\.select_by is empty"):
        load_config(EvalConfig, None, ["generation.mode=best_of_n"])
    # A value given with the one that makes it valid, in any order, is fine: a section is built from all its keys.
    config = load_config(EvalConfig, None, ["tasks=win_rate", "win_rate.judge=math_correct"])
    assert config.win_rate.judge == "math_correct"


def test_a_yaml_file_with_a_bad_value_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  micro_batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"^train\.micro_batch_size must be at least 1, got 0$"):
        load_config(SFTConfig, path)
