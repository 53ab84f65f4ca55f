"""Building the trainable policy for preference and RL recipes."""

from __future__ import annotations

import torch

from tunekit.models.adapters import apply_adapter
from tunekit.models.load import ModelConfig, adapter_dir, load_model
from tunekit.models.reference import REFERENCE_ADAPTER


def build_policy(config: ModelConfig, reference_adapter: bool = True) -> torch.nn.Module:
    """A fresh adapter on the base, or an earlier run's adapter continued.

    When ``model.path`` is an adapter directory (e.g. SFT's final/) that adapter is trained further, and with
    ``reference_adapter`` a frozen copy of it is loaded beside it as the reference policy (see
    :mod:`tunekit.models.reference`), so the reference is the model the run started from.
    """
    earlier = adapter_dir(config.path)
    if earlier is None or config.adapter.method == "full":
        return apply_adapter(load_model(config), config.adapter, gradient_checkpointing=config.gradient_checkpointing)
    from peft import PeftModel

    base = load_model(config, merge_earlier_adapter=False)
    if config.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    policy = PeftModel.from_pretrained(base, earlier, is_trainable=True)
    if reference_adapter:
        policy.load_adapter(earlier, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        policy.set_adapter("default")
    return policy
