"""Loading base models and tokenizers: local directories, hub ids and the embedded tiny models.

One entry point, :func:`load_model`, covers dtype, bitsandbytes quantisation (NF4 with double quantisation for
QLoRA, or 8-bit) and the model head. Problems a user can fix (a path that does not exist, quantisation where
bitsandbytes cannot run) raise :class:`~tunekit.errors.ModelError` before any training starts.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tunekit.errors import ModelError, require
from tunekit.fast import FastPathConfig
from tunekit.models.adapters import AdapterConfig, check_mergeable
from tunekit.models.tiny import DEFAULT_CHAT_TEMPLATE, TINY_MODELS, tiny_model_path

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModelConfig:
    # A local Hugging Face directory, a hub id, or an embedded model: tiny-llama, tiny-mistral, the
    # mixture-of-experts tiny-mixtral and tiny-qwen-moe, or tiny-llama-small (a smaller student for distillation).
    path: str = "tiny-llama"
    # Dtype the base weights are stored in (and computed in, unless train.mixed_precision says otherwise).
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Store the frozen base in 4-bit NF4 (QLoRA) or 8-bit through bitsandbytes.
    quantization: Literal["none", "4bit", "8bit"] = "none"
    # Attention kernel: sdpa (torch's scaled_dot_product_attention; padding-free batches need it) or eager (plain
    # matmuls, slower; for comparisons and debugging).
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # Recompute each layer's activations in the backward pass instead of keeping them: much less activation memory for
    # about one more forward pass of compute. Training recipes only; not with prefix_tuning.
    gradient_checkpointing: bool = False
    # Run code shipped inside a hub repository. Off unless you trust its author.
    trust_remote_code: bool = False
    # Branch, tag or commit of a hub model to load (null: the default branch); local directories ignore it. With an
    # adapter directory as path, it applies to the base the adapter records.
    revision: str | None = None
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    # tunekit's speed code (tunekit/fast/): each path on where it applies; enabled=false runs plain transformers + peft.
    fast_paths: FastPathConfig = field(default_factory=FastPathConfig)

    def __post_init__(self) -> None:
        require(bool(self.path.strip()), "path", "is empty; give a local directory, a hub id or tiny-llama")
        require(self.revision is None or bool(self.revision.strip()), "revision", "is empty; give one or null")


def resolve_model_path(path: str) -> str:
    """An embedded model name becomes its cached directory; anything else is returned as given."""
    if path in TINY_MODELS:
        return str(tiny_model_path(path))
    return path


def adapter_dir(path: str) -> Path | None:
    """``path`` if it is a PEFT adapter directory (e.g. an earlier run's final/), else None."""
    local = Path(path)
    return local if (local / "adapter_config.json").is_file() else None


def adapter_base(adapter: Path) -> str:
    """The base model recorded in an adapter directory."""
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not recorded:
        raise ModelError(f"adapter {adapter} records no base model (base_model_name_or_path in adapter_config.json)")
    return recorded


def check_quantization_available(quantization: str) -> None:
    if quantization == "none":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"model.quantization={quantization} needs bitsandbytes, which is not installed "
            "(pip install bitsandbytes), or set model.quantization=none"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # bitsandbytes raises many kinds of errors when its native library is missing
        raise ModelError(
            f"model.quantization={quantization} needs bitsandbytes, which cannot run here: {err}"
        ) from None


def load_tokenizer(path: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """The tokenizer at ``path``, with a pad token and a chat template guaranteed."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model_path(path), trust_remote_code=trust_remote_code, revision=revision
        )
    except (OSError, ValueError) as err:
        raise ModelError(_not_found_message(path, err)) from None
    if tokenizer.pad_token_id is None:
        # Padding is always masked out, so reusing EOS is safe; positions are taken from the mask, never from
        # searching for the pad id.
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def load_model(
    config: ModelConfig, head: Literal["causal-lm", "score"] = "causal-lm", merge_earlier_adapter: bool = True
) -> torch.nn.Module:
    """The base model of ``config`` with a language-model head or a one-output score head (no adapter yet).

    ``model.path`` may be an earlier run's adapter directory: its recorded base is loaded and, with
    ``merge_earlier_adapter``, the adapter is merged into it.
    """
    from transformers import BitsAndBytesConfig

    check_quantization_available(config.quantization)
    dtype = DTYPES[config.dtype]
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": config.attn_implementation,
        "trust_remote_code": config.trust_remote_code,
        "revision": config.revision,
    }
    if config.quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
    elif config.quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    earlier_adapter = adapter_dir(config.path)
    if earlier_adapter is not None and not merge_earlier_adapter:
        return load_base(adapter_base(earlier_adapter), head, kwargs)
    return load_base(config.path, head, kwargs)


def load_base(path: str, head: Literal["causal-lm", "score"], kwargs: dict[str, Any]) -> torch.nn.Module:
    """The weights ``path`` stands for, with a language-model or a one-output score head.

    ``path`` is a model directory, a hub id or an embedded model's name; or an adapter directory, which stands for
    its recorded base with the adapter merged in. That base may itself be an adapter directory (a run started from
    an earlier run's final/ records that final/ as its base), so a chain of runs loads as it was trained. The model
    remembers the absolute path it came from, and an adapter trained on it records that path as its base.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    adapter = adapter_dir(path)
    if adapter is not None:
        from peft import PeftConfig, PeftModel

        check_mergeable(adapter)
        base = load_base(adapter_base(adapter), head, kwargs)
        adapter_config = PeftConfig.from_pretrained(str(adapter))
        # No task type: the plain PeftModel wrapper, which fits a causal-LM adapter onto a score-head model too.
        adapter_config.task_type = None
        model = PeftModel.from_pretrained(base, adapter, config=adapter_config).merge_and_unload()
        model.name_or_path = str(adapter.resolve())
        return model
    path = resolve_model_path(path)
    if Path(path).is_dir():
        # Recorded absolute, so that an adapter trained on it loads from any working directory.
        path = str(Path(path).resolve())
    try:
        if head == "score":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ModelError(_not_found_message(path, err)) from None
    if head == "score" and model.config.pad_token_id is None:
        # transformers refuses batches without a pad id even though tunekit reads scores from the mask.
        model.config.pad_token_id = model.config.eos_token_id
    return model


def use_router_aux_loss(model: torch.nn.Module, coef: float | None) -> float:
    """Make a mixture-of-experts ``model`` return its router's load-balancing loss (``outputs.aux_loss``), and
    return the weight to add it with: ``coef``, or the model config's own ``router_aux_loss_coef`` when ``coef`` is
    None. 0 for a dense model (no router) or a zero weight, which leaves the model as it was."""
    config = model.config
    if not hasattr(config, "output_router_logits"):
        return 0.0
    weight = float(getattr(config, "router_aux_loss_coef", 0.0) if coef is None else coef)
    # Router logits cost a little memory per layer; a run that does not use them does not ask for them.
    config.output_router_logits = weight > 0
    return weight


def load_score_model(path: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A reward model for scoring: a reward run's adapter directory on its base, or a merged model directory."""
    from peft import PeftModel

    adapter = adapter_dir(path)
    model = load_base(adapter_base(adapter) if adapter else path, "score", {"dtype": dtype})
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _not_found_message(path: str, err: Exception) -> str:
    local = Path(path).expanduser()
    if local.exists() and not (local / "config.json").exists():
        return f"model.path {path!r} is a local path but holds no config.json (not a Hugging Face model directory)"
    if local.is_dir() and not any((local / name).exists() for name in TOKENIZER_FILES):
        return (
            f"model.path {path!r} holds a model but no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer beside the weights (tokenizer.save_pretrained)"
        )
    if not local.exists() and (local.is_absolute() or path.startswith((".", "~", "runs/"))):
        return f"model.path {path!r} does not exist"
    if path.count("/") > 1 and not local.exists():
        return f"model.path {path!r} is neither a local directory nor a hub id (hub ids read owner/name)"
    if local.exists():
        return f"model.path {path!r} could not be loaded: {err}"
    return (
        f"model.path {path!r} is not a local directory and could not be loaded as a hub id "
        f"(is the name right, and is the hub reachable?): {str(err).splitlines()[0]}"
    )
