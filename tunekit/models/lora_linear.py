"""A leaner forward for peft's LoRA linear layers: the adapter's scaling and sum done inside its second matmul.

peft computes a LoRA layer as ``base(x) + lora_B(lora_A(dropout(x))) * scaling``. After the two small matmuls, the
multiply and the add each read and write a tensor as wide as the layer's output, and the backward repeats the
multiply: three passes over [tokens, out_features] per adapted layer, for seven layers per transformer block. With
``torch.addmm(base(x), h, B^T, alpha=scaling)`` the BLAS epilogue does both (its alpha and beta), and the backward
of addmm needs no extra pass either. The weights, the adapter files and the function computed are peft's; only
the rounding order of the sum differs.

:func:`use_lean_forward` switches the plain LoRA layers of a model; each call falls back to peft's own forward for
anything else: adapters disabled (a DPO reference pass) or merged, several active adapters, DoRA and other
variants, a bias on ``lora_B``, mixed-adapter batches, dtypes that do not match outside autocast, and ZeRO-3,
whose partitioned weights are gathered only when their own module is called.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def use_lean_forward(model: torch.nn.Module) -> int:
    """Give every plain ``peft`` LoRA ``Linear`` of ``model`` the lean forward; returns how many were switched."""
    from peft.tuners.lora.layer import Linear

    switched = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = types.MethodType(lean_forward, module)
            switched += 1
    return switched


def lean_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """x [..., in_features] -> [..., out_features]: ``base(x) + scaling * lora_B(lora_A(dropout(x)))``."""
    adapter = plain_lora_adapter(layer, args, kwargs)
    if adapter is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
    result = layer.base_layer(x)
    hidden = lora_a(layer.lora_dropout[adapter](layer._cast_input_dtype(x, lora_a.weight.dtype)))
    if not torch.is_autocast_enabled(x.device.type) and not (result.dtype == hidden.dtype == lora_b.weight.dtype):
        return (result + lora_b(hidden) * layer.scaling[adapter]).to(result.dtype)  # peft's own arithmetic
    width = result.shape[-1]
    summed = torch.addmm(
        result.reshape(-1, width), hidden.reshape(-1, hidden.shape[-1]), lora_b.weight.t(), alpha=layer.scaling[adapter]
    )
    return summed.view(result.shape)


def plain_lora_adapter(layer: Any, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter of ``layer`` if it is plain LoRA that the lean forward computes exactly; else None."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    # DoRA and other variants (peft keeps them in lora_variant; older releases flag DoRA in use_dora).
    if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}):
        return None
    if getattr(layer, "use_dora", {}).get(adapter, False):
        return None
    weight = layer.lora_B[adapter].weight
    if layer.lora_B[adapter].bias is not None or hasattr(weight, "ds_id"):
        return None
    return adapter
