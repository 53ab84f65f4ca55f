"""The optimizer and learning-rate schedule a run's TrainConfig asks for."""

from __future__ import annotations

from typing import Any

import torch

from tunekit.errors import ConfigError
from tunekit.train.spec import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """An optimizer over the model's trainable parameters; the 8-bit kinds come from bitsandbytes."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; check model.adapter")
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    try:
        import bitsandbytes as bnb
    except Exception as err:
        raise ConfigError(
            f"train.optimizer={config.optimizer} needs bitsandbytes, which cannot run here: {err}"
        ) from None
    cls = bnb.optim.AdamW8bit if config.optimizer == "adamw_8bit" else bnb.optim.PagedAdamW8bit
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    """Linear warmup over ``warmup_ratio`` of ``total_steps``, then ``config.scheduler``'s shape."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = int(config.warmup_ratio * total_steps)
    if config.scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    make = get_cosine_schedule_with_warmup if config.scheduler == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, warmup, total_steps)
