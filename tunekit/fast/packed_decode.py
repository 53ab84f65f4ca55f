"""Packed fp32 weights for the CPU decode steps of :mod:`tunekit.fast.decode` (:func:`packed_linears`), and the op
that keeps their oneDNN matmul inside a compiled step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tunekit.fast import note_once

# Linear modules that read the same input, and a function computing all their outputs at once.
Projections = tuple[torch.nn.Module, ...]
Projection = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def packed_linears(model: torch.nn.Module, rows: int) -> dict[Projections, Projection]:
    """oneDNN-packed fp32 weights for the decode steps of ``model`` on the CPU; {} elsewhere.

    At a few rows a step, torch's default CPU matmul reads the weights at a fraction of the memory's rate; oneDNN's
    inner product on weights reordered once for ``rows`` rows reads them faster (``benchmarks/decode_floor.py``
    measures both). A plain LoRA layer is packed with its update merged in, ``W + s * B @ A``,
    which also saves its two adapter matmuls a step, and projections of the same input (q, k and v; gate and up)
    are packed as one matrix. The copies live for one rollout (the adapter changes between rollouts); layers of
    other kinds (DoRA, IA3, 4-bit, other dtypes) keep their own forward.
    """
    if next(model.parameters()).device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return {}
    groups: list[Projections] = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        groups += [(attention.q_proj, attention.k_proj, attention.v_proj), (attention.o_proj,)]
        groups += [(mlp.gate_proj, mlp.up_proj), (mlp.down_proj,)]
    groups.append((model.lm_head,))
    if not _copy_fits(groups):
        note_once("packed-decode", "a packed fp32 copy of the weights would take over a quarter of free memory")
        return {}
    table: dict[Projections, Projection] = {}
    for modules in groups:
        packed = _packed(modules, rows)
        if packed is not None:
            table[modules] = packed
    return table


def _copy_fits(groups: list[Projections]) -> bool:
    """Whether a packed fp32 copy of every weight in ``groups`` takes at most a quarter of the free memory.

    A large model decoding on the CPU keeps its own forward rather than risk running out of memory mid-run.
    """
    import psutil

    size = sum(getattr(module, "base_layer", module).weight.numel() * 4 for group in groups for module in group)
    return size <= psutil.virtual_memory().available // 4


def _packed(modules: Projections, rows: int) -> Projection | None:
    """One packed matrix computing every module of ``modules`` (which share their input), or None."""
    effective = [_effective_weight(module) for module in modules]
    if any(weight is None or weight.dtype != torch.float32 for weight, _ in effective):
        return None
    sizes = [weight.shape[0] for weight, _ in effective]
    packed = torch.ops.mkldnn._reorder_linear_weight(torch.cat([weight for weight, _ in effective]), rows)
    bias = None
    if any(b is not None for _, b in effective):
        bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in effective])

    def project(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if torch.compiler.is_compiling():
            return torch.ops.tunekit.packed_linear(x, packed, bias, sum(sizes)).split(sizes, dim=-1)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "").split(sizes, dim=-1)

    return project


# oneDNN's linear on a weight reordered by ``_reorder_linear_weight``, as an op of tunekit's own, so that inductor
# calls the kernel as it is inside a compiled step: its lowering of the mkldnn op itself only accepts weights frozen
# into the graph as constants, and these change with every rollout. A plain library op rather than
# ``torch.library.custom_op``, whose Python wrapper costs a third of a small matmul per call here.
_LIBRARY = torch.library.Library("tunekit", "DEF")
_LIBRARY.define("packed_linear(Tensor x, Tensor packed, Tensor? bias, SymInt out_features) -> Tensor")


def _packed_linear_kernel(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """[R, in] -> [R, out_features]."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packed_linear_shape(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


_LIBRARY.impl("packed_linear", _packed_linear_kernel, "CompositeExplicitAutograd")
torch.library.register_fake("tunekit::packed_linear", _packed_linear_shape, lib=_LIBRARY)


def _effective_weight(module: torch.nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(weight, bias) that ``module`` multiplies by, for a plain linear layer or plain LoRA; (None, None) otherwise."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    from tunekit.fast.lean_lora import merged_weight, plain_lora_adapter

    if type(module) is torch.nn.Linear:
        return module.weight.detach(), _detached(module.bias)
    if type(module) is not LoraLinear or type(module.base_layer) is not torch.nn.Linear or module.fan_in_fan_out:
        return None, None
    base = module.base_layer
    if module.merged or module.disable_adapters:
        return base.weight.detach(), _detached(base.bias)
    adapter = plain_lora_adapter(module, (), {})
    if adapter is None:
        return None, None
    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    if not a.dtype == b.dtype == base.weight.dtype:
        return None, None
    return merged_weight(base.weight, a, b, module.scaling[adapter]).detach(), _detached(base.bias)


def _detached(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach()
