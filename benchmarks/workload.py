"""The fixed benchmark workloads: the model, the data and the hyperparameters both sides train with.

The model is built offline the way tunekit's embedded tiny models are (``tunekit.models.tiny``): a byte-level BPE
tokenizer trained with ``tokenizers``, here on the GSM8K train text, and a randomly initialised LLaMA-style model
(seed 0) saved in Hugging Face format and cached under ``$TUNEKIT_CACHE/models``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunekit.models.tiny import build_causal_lm, cached_model_dir, train_tokenizer

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TRAIN = DATA_DIR / "gsm8k" / "train.jsonl"
HH_RLHF = DATA_DIR / "hh-rlhf" / "harmless-base-test.jsonl"
# Bump when the model recipe below changes, so that old caches are not reused.
_VERSION = "v1"


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    # GSM8K train rows the tokenizer is trained on (None: all).
    tokenizer_rows: int | None = None

    def model_shape(self) -> dict[str, int]:
        fields = asdict(self)
        return {k: v for k, v in fields.items() if k not in ("vocab_size", "tokenizer_rows")}


SHAPES = {
    # The fixed workload: about 31.6M parameters.
    "bench": Shape(512, 1376, 8, 8, 4, 8192),
    # A LLaMA-1B-like shape for a GPU (about 0.75B parameters with this vocabulary).
    "1b": Shape(2048, 5632, 16, 32, 8, 8192),
    # Seconds-long shapes for the test suite.
    "tiny": Shape(64, 176, 2, 4, 2, 512, tokenizer_rows=500),
}


def gsm8k_text(rows: int | None = None) -> list[str]:
    texts = []
    with GSM8K_TRAIN.open() as f:
        for i, line in enumerate(f):
            if rows is not None and i >= rows:
                break
            row = json.loads(line)
            texts.append(f"{row['question']}\n{row['answer']}")
    return texts


def model_path(shape: str) -> Path:
    """Directory of the benchmark model of ``shape`` (a key of SHAPES), built and cached on first use."""
    spec = SHAPES[shape]

    def build(out_dir: Path) -> None:
        tokenizer = train_tokenizer(spec.vocab_size, gsm8k_text(spec.tokenizer_rows))
        build_causal_lm(out_dir, tokenizer, spec.model_shape(), seed=0)

    return cached_model_dir(f"bench-llama-{shape}-{_VERSION}", build)


@dataclass
class Workload:
    """What both sides train with; ``rows`` limits the data read (the quick test version), None reads all."""

    recipe: str
    model: str
    precision: str  # fp32 | bf16 (autocast)
    device: str
    lr: float
    max_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    # SFT: examples a step; DPO: pairs a step; GRPO: completions a step.
    batch_size: int = 8
    beta: float = 0.1  # DPO
    num_generations: int = 4  # GRPO
    max_new_tokens: int = 64  # GRPO
    rows: int | None = None
    seed: int = 0
    # Stored dtype of the model's weights (the trained adapters stay fp32): fp32, or bf16 as real checkpoints
    # ship and as both sides load them when asked to.
    weights: str = "fp32"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        return cls(**json.loads(text))


def workload(
    recipe: str, model: str, precision: str, device: str, rows: int | None = None, weights: str = "fp32"
) -> Workload:
    """The issue's fixed hyperparameters for ``recipe``."""
    settings = {"sft": (2e-4, 8), "dpo": (5e-6, 4), "grpo": (1e-5, 8)}
    if recipe not in settings:
        raise ValueError(f"unknown recipe {recipe!r}")
    lr, batch_size = settings[recipe]
    return Workload(recipe, model, precision, device, lr=lr, batch_size=batch_size, rows=rows, weights=weights)


def sft_data_config(work: Workload, packing: bool) -> dict[str, Any]:
    """tunekit's data section for SFT; the TRL side tokenizes with the same code, so both see the same tokens."""
    return {
        "path": str(GSM8K_TRAIN),
        "format": "prompt_completion",
        "prompt_column": "question",
        "completion_column": "answer",
        "max_length": work.max_length,
        "packing": packing,
        "eval_fraction": 0.0,
        "max_examples": work.rows,
    }


def tunekit_order(n: int, seed: int) -> list[int]:
    """The order in which tunekit's runner visits ``n`` items in epoch 0 (see tunekit.train.runner)."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def sft_examples(work: Workload, tokenizer: Any) -> list[Any]:
    """The unpacked SFT examples, tokenized by tunekit's code, in the order tunekit's runner visits them."""
    from tunekit.config import from_dict
    from tunekit.data.sft import DataConfig, load_sft_data

    config = from_dict(DataConfig, sft_data_config(work, packing=False))
    examples, _, _ = load_sft_data(config, tokenizer, work.seed, lambda n, s: [])
    return [examples[i] for i in tunekit_order(len(examples), work.seed)]


def dpo_data_config(work: Workload) -> dict[str, Any]:
    # Some hh-rlhf prompts alone are longer than max_length; both sides keep the last half of max_length of a
    # prompt (the turns next to the response), as TRL's max_prompt_length did before it was removed.
    return {
        "path": str(HH_RLHF),
        "max_length": work.max_length,
        "max_prompt_length": work.max_length // 2,
        "eval_fraction": 0.0,
        "max_examples": work.rows,
    }


def grpo_data_config(work: Workload) -> dict[str, Any]:
    return {
        "path": str(GSM8K_TRAIN),
        "prompt_column": "question",
        "eval_fraction": 0.0,
        "max_examples": work.rows,
        "max_prompt_length": work.max_length,
    }
