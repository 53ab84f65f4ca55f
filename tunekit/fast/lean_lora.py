"""A leaner forward for peft's LoRA linear layers: fewer passes and fewer small matmuls than peft's.

peft computes a LoRA layer as ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: the base matmul, two thin
matmuls of rank r, then a multiply and an add that each read and write a tensor as wide as the layer's output.
The backward repeats the multiply and runs four more thin matmuls (two for the input's gradient, one for each
adapter matrix's), then adds the input's two gradients.

The lean forward takes one of two routes:

- **A training forward over many rows** multiplies by the merged weight ``W + scaling * B @ A``
  (:class:`_MergedLoRA`). The forward is one matmul, and so is the input's gradient; four thin matmuls remain, all
  for the adapters' own gradients. Of peft's six thin matmuls, that saves the two that cost ``2 r M N`` and
  ``2 r M K`` FLOPs for M rows of an N x K layer; the merge costs ``2 r N K``, once in the forward and once in the
  backward. So this route is taken where ``M (N + K) > 2 N K``. The backward merges again rather than keep the
  forward's merged weight: no merged copy of a layer's weight is held from its forward to its backward.
- **Everything else on a plain adapter** (no-grad passes, decode steps of a few rows, autocast) sums the adapter's
  update inside its second matmul: ``torch.addmm(base(x), h, B^T, alpha=scaling)``, where the BLAS epilogue does
  the multiply and the add.

:func:`use_lean_forward` switches the plain LoRA layers of a model. Each call falls back to peft's own forward for
anything else: adapters disabled (a DPO reference pass) or merged, several active adapters, DoRA and other
variants, a bias on ``lora_B``, mixed-adapter batches, dtypes that do not match outside autocast, and ZeRO-3,
whose partitioned weights are gathered only when their own module is called. The weights, the adapter files and the
function computed are peft's; only the rounding order of the sums differs.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


def use_lean_forward(model: torch.nn.Module) -> int:
    """Give every ``peft`` LoRA ``Linear`` of ``model`` the lean forward, if its active adapter is plain LoRA in at
    least one of them; returns how many are plain (0: none switched: DoRA and other variants keep peft's own)."""
    from peft.tuners.lora.layer import Linear

    layers = [module for module in model.modules() if type(module) is Linear]
    plain = sum(plain_lora_adapter(layer, (), {}) is not None for layer in layers)
    if plain:
        # Every layer, not only the plain ones: adapters added later (PPO's critic) may be plain, and a call the
        # lean forward does not cover goes to peft's own.
        for layer in layers:
            layer.forward = types.MethodType(lean_forward, layer)
    return plain


def lean_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """x [..., in_features] -> [..., out_features]: ``base(x) + scaling * lora_B(lora_A(dropout(x)))``."""
    adapter = plain_lora_adapter(layer, args, kwargs)
    if adapter is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
    if merges(layer, adapter, x):
        base = layer.base_layer
        flat = x.reshape(-1, x.shape[-1])
        out = _MergedLoRA.apply(flat, base.weight, base.bias, lora_a.weight, lora_b.weight, layer.scaling[adapter])
        return out.view(*x.shape[:-1], out.shape[-1])
    result = layer.base_layer(x)
    hidden = lora_a(layer.lora_dropout[adapter](layer._cast_input_dtype(x, lora_a.weight.dtype)))
    if not torch.is_autocast_enabled(x.device.type) and not (result.dtype == hidden.dtype == lora_b.weight.dtype):
        return (result + lora_b(hidden) * layer.scaling[adapter]).to(result.dtype)  # peft's own arithmetic
    width = result.shape[-1]
    summed = torch.addmm(
        result.reshape(-1, width), hidden.reshape(-1, hidden.shape[-1]), lora_b.weight.t(), alpha=layer.scaling[adapter]
    )
    return summed.view(result.shape)


def merges(layer: Any, adapter: str, x: torch.Tensor) -> bool:
    """Whether the lean forward of ``layer`` (a plain LoRA adapter, see :func:`plain_lora_adapter`) on input
    ``x`` [..., K] runs on the merged weight: a training forward of a frozen ``nn.Linear`` base, no adapter
    dropout, one dtype throughout and no autocast, and enough rows to pay for the merge (module docstring) unless
    compiled."""
    base, lora_a, lora_b = layer.base_layer, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if type(base) is not torch.nn.Linear or layer.fan_in_fan_out or base.weight.requires_grad:
        return False
    if not torch.is_grad_enabled() or not (lora_a.requires_grad or lora_b.requires_grad):
        return False
    if not isinstance(layer.lora_dropout[adapter], torch.nn.Identity) or torch.is_autocast_enabled(x.device.type):
        return False
    if not x.dtype == base.weight.dtype == lora_a.dtype == lora_b.dtype:
        return False
    if torch.compiler.is_compiling():
        # A compiled block (train.compile) would guard on the row count below and compile again each time a batch
        # crossed the threshold; the merged route serves every batch there instead.
        return True
    out_features, in_features = base.weight.shape
    rows = x.numel() // in_features
    return rows * (out_features + in_features) > 2 * out_features * in_features


def merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``weight + scaling * lora_b @ lora_a``: [N, K] from [N, K], [r, K] and [N, r]."""
    return torch.addmm(weight, lora_b, lora_a, alpha=scaling)


class _MergedLoRA(torch.autograd.Function):
    """x [M, K] -> x @ (W + s B A)^T + bias [M, N], with gradients for x, A [r, K] and B [N, r] only (the base
    weight and bias are frozen)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight, lora_a, lora_b)
        ctx.scaling = scaling
        return F.linear(x, merged_weight(weight, lora_a, lora_b, scaling), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, lora_a, lora_b = ctx.saved_tensors
        needs_x, _, _, needs_a, needs_b, _ = ctx.needs_input_grad
        grad_x = grad_a = grad_b = None
        if needs_x:
            grad_x = grad @ merged_weight(weight, lora_a, lora_b, ctx.scaling)
        if needs_a:
            grad_a = (grad @ lora_b).t() @ x  # [r, M] @ [M, K]
            grad_a.mul_(ctx.scaling)
        if needs_b:
            grad_b = grad.t() @ (x @ lora_a.t())  # [N, M] @ [M, r]
            grad_b.mul_(ctx.scaling)
        return grad_x, None, None, grad_a, grad_b, None


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
