"""Adapter methods through peft (LoRA, DoRA) or full fine-tuning, and merging adapters back into a base."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tunekit.errors import ModelError


@dataclass
class AdapterConfig:
    # lora, dora (weight-decomposed LoRA) or full (every weight trained, no adapter).
    method: Literal["lora", "dora", "full"] = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # Module names (matched against the last part of each module's name, e.g. q_proj) or ["all-linear"].
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # Scale by alpha / sqrt(r) instead of alpha / r (rsLoRA).
    use_rslora: bool = False


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Sorted short names of the linear layers an adapter can target (output heads excluded)."""
    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Linear4bit", "Linear8bitLt"):
            short = name.rsplit(".", 1)[-1]
            if short not in ("lm_head", "score"):
                names.add(short)
    return sorted(names)


def apply_adapter(
    model: torch.nn.Module,
    config: AdapterConfig,
    head: Literal["causal-lm", "score"] = "causal-lm",
    gradient_checkpointing: bool = False,
) -> torch.nn.Module:
    """Wrap ``model`` with the adapter of ``config`` (or unfreeze it for ``full``); returns the trainable model.

    For a score head, the head itself is always trained and saved with the adapter.
    """
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if config.method == "full":
        if quantized:
            raise ModelError(
                "model.adapter.method=full cannot train quantised weights; use lora or dora with quantization, "
                "or set model.quantization=none"
            )
        for param in model.parameters():
            param.requires_grad_(True)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    available = linear_module_names(model)
    targets: str | list[str]
    if config.target_modules == ["all-linear"]:
        targets = available
    else:
        missing = [t for t in config.target_modules if t not in available]
        if missing:
            raise ModelError(
                f"model.adapter.target_modules {missing} match no linear layer of this model; "
                f"its linear layers are: {', '.join(available)} (or use all-linear)"
            )
        targets = list(config.target_modules)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        use_dora=config.method == "dora",
        use_rslora=config.use_rslora,
        task_type="SEQ_CLS" if head == "score" else "CAUSAL_LM",
        modules_to_save=["score"] if head == "score" else None,
    )
    return get_peft_model(model, peft_config)


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of every parameter that receives gradients."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: torch.nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_fraction": trainable / max(total, 1)}
