"""The reference policy, without a second copy of the weights whenever an adapter makes that possible.

Three ways, chosen by how the policy was built:

- ``adapter_disabled``: a fresh adapter on the base; the reference is the base, i.e. the same model with the
  adapter switched off.
- ``reference_adapter``: the policy continues an earlier run's adapter (e.g. SFT's final/); a frozen copy of that
  adapter is loaded beside it under the name "reference" (adapter weights only) and switched in for the pass.
- ``frozen_copy``: full fine-tuning; a frozen copy of the starting weights is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import torch

from tunekit.fast import COMPILED, fast_paths_of

REFERENCE_ADAPTER = "reference"
T = TypeVar("T")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel (or similar) wrapper."""
    return getattr(model, "module", model)


class ReferencePolicy:
    def __init__(self, kind: Literal["adapter_disabled", "reference_adapter", "frozen_copy"], frozen=None) -> None:
        self.kind = kind
        self.frozen = frozen

    @classmethod
    def for_policy(cls, policy: torch.nn.Module) -> ReferencePolicy:
        peft_config = getattr(unwrap(policy), "peft_config", None)
        if not peft_config:
            if fast_paths_of(policy).uses(COMPILED):
                # A compiled block's forward is a closure over the block it was compiled from; a copy would keep it.
                raise RuntimeError("ReferencePolicy.for_policy must copy the policy before its blocks are compiled")
            frozen = copy.deepcopy(unwrap(policy)).eval()
            frozen.requires_grad_(False)
            return cls("frozen_copy", frozen)
        if REFERENCE_ADAPTER in peft_config:
            return cls("reference_adapter")
        return cls("adapter_disabled")

    @torch.no_grad()
    def run(self, policy: torch.nn.Module, fn: Callable[[torch.nn.Module], T]) -> T:
        """``fn(model)`` evaluated under the reference policy, without gradients and in eval mode: the reference
        is a fixed function, so dropout (in the adapter or the base) stays off even while the policy trains."""
        if self.kind == "frozen_copy":
            device = next(policy.parameters()).device
            if next(self.frozen.parameters()).device != device:
                self.frozen.to(device)
            return fn(self.frozen)
        model = unwrap(policy)
        was_training = model.training
        model.eval()
        try:
            with self._switched(model):
                return fn(policy)
        finally:
            model.train(was_training)

    @contextmanager
    def _switched(self, peft_model: Any):
        if self.kind == "adapter_disabled":
            with peft_model.disable_adapter():
                yield
            return
        active = peft_model.active_adapter
        # peft's adaption prompts (llama_adapter) take no inference_mode, which they do not need: their set_adapter
        # leaves every requires_grad flag as it is (the run is under no_grad anyway).
        prompts = getattr(peft_model.peft_config[REFERENCE_ADAPTER], "is_adaption_prompt", False)
        peft_model.set_adapter(REFERENCE_ADAPTER, inference_mode=not prompts)
        if prompts:
            _adaption_prompts_to_device(peft_model)
        try:
            yield
        finally:
            # Switching back makes the policy adapter trainable again; the reference stays frozen.
            peft_model.set_adapter(active)


def _adaption_prompts_to_device(peft_model: Any) -> None:
    """Put each adaption prompt just switched in on the device of the attention layer it wraps.

    peft keeps the modules of an inactive adaption prompt outside the model, so moving the model to its training
    device (accelerate's prepare) leaves the reference's prompts behind on the device they were loaded on.
    """
    for module in peft_model.modules():
        if isinstance(getattr(module, "adaption_prompt", None), torch.nn.Parameter):
            device = next(module.model.parameters()).device
            for param in module.parameters(recurse=False):
                if param.device != device:
                    param.data = param.data.to(device)
