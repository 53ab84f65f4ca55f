"""The causal LM an evaluation generates with: a base model, an adapter run's final/ or a merged export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch

from tunekit.errors import ConfigError
from tunekit.fast import enable_fast_paths
from tunekit.models.adapters import check_mergeable
from tunekit.models.load import ModelConfig, adapter_dir, load_model
from tunekit.models.reward import is_reward_adapter

Device = Literal["auto", "cpu", "cuda"]


def check_causal_lm(path: str, key: str) -> None:
    """Refuse a reward model where a generating model is wanted (it has no language-model head to sample from),
    and an adapter that cannot be merged into its base (the prompt-learning methods)."""
    config = Path(path) / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    scores_only = bool(architectures) and all(a.endswith("ForSequenceClassification") for a in architectures)
    if is_reward_adapter(path) or scores_only:
        raise ConfigError(
            f"{key}={path!r} is a reward model, which scores text but cannot generate it; give a causal LM here "
            "and use the reward model as win_rate.judge or generation.select_by (model:<dir>)"
        )
    adapter = adapter_dir(path)
    if adapter is not None:
        check_mergeable(adapter)  # an evaluated adapter is merged into its base (load_eval_model)


def resolve_device(device: Device) -> str:
    """``auto`` -> cuda when there is one, else cpu; ``cuda`` without a GPU is refused."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_eval_model(config: ModelConfig, device: str, path: str | None = None) -> torch.nn.Module:
    """``config``'s model (or the one at ``path`` with the same settings) in eval mode on ``device``.

    An adapter directory is loaded onto the base it records and merged (``load_model``), so an adapter run's
    final/ and its merged export evaluate alike. The fast paths ``config.fast_paths`` allows are turned on
    (:func:`tunekit.fast.fast_paths_of` tells which).
    """
    # Another model (an opponent) shares dtype and quantisation, not the revision pinned for model.path.
    model = load_model(replace(config, path=path, revision=None) if path is not None else config).eval()
    # A bitsandbytes-quantized model is already placed where it runs and cannot be moved.
    if config.quantization == "none":
        model = model.to(device)
    enable_fast_paths(model, config.fast_paths, generates=True, device=device)
    return model
