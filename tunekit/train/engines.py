"""What the distributed engines (DDP, FSDP2, DeepSpeed ZeRO) change for the runner, in one place.

The runner's loop is the same under every engine; these helpers hide the differences: how the Accelerator is
made (DeepSpeed on the CPU included), how micro-batches skip the gradient sync, how sharded weights are gathered
for a checkpoint, and how DeepSpeed learns the batch size and clipping that tunekit's config already holds.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from accelerate.utils import DistributedType


def make_accelerator(mixed_precision: str, **extra: Any) -> Any:
    """An Accelerator; in a single process, several runs with different precisions may follow each other.

    accelerate keeps one process-wide state and refuses a second precision; outside a distributed launch that
    state holds nothing worth keeping between runs, so it is reset. ``extra``: more Accelerator arguments (the
    trackers', see tunekit/train/trackers.py).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    options = {**_placement(), **extra}
    try:
        return Accelerator(mixed_precision=mixed_precision, **options)
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed_precision, **options)


def _placement() -> dict[str, Any]:
    """The GPU when there is one; otherwise the CPU, with DDP (and FSDP) over gloo, or DeepSpeed over gloo."""
    if torch.cuda.is_available():
        return {"cpu": False}
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # accelerate starts DeepSpeed only when it is not told cpu=True; DeepSpeed then picks its CPU accelerator,
        # whose collectives go over gloo, and accelerate needs that backend named to count the processes.
        from accelerate.utils import InitProcessGroupKwargs

        return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}
    return {"cpu": True}


def describe(accelerator: Any) -> str:
    """The engine in words, e.g. "DeepSpeed ZeRO-3 on cpu" or "DDP on cuda"."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        name = f"DeepSpeed ZeRO-{_zero_stage(accelerator)}"
    elif kind == DistributedType.FSDP:
        name = f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    elif kind in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        name = "DDP"
    else:
        name = str(kind).split(".")[-1]
    text = f"{name} on {accelerator.device.type}"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and kind != DistributedType.FSDP:
        # accelerate turns FSDP on for GPU-like devices only; on the CPU an FSDP config quietly becomes DDP.
        text += " (FSDP was asked for, but accelerate runs FSDP on GPUs only)"
    return text


def is_sharded(accelerator: Any) -> bool:
    """Whether weights or optimizer state are split across processes (FSDP, DeepSpeed ZeRO)."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def configure_deepspeed(accelerator: Any, micro_batch_size: int, max_grad_norm: float) -> None:
    """Hand DeepSpeed the figures tunekit's config holds, before ``prepare``.

    tunekit accumulates micro-batches itself (it marks each backward as a boundary or not), so DeepSpeed's own
    accumulation stays at 1 and never rescales the loss; clipping is DeepSpeed's, at ``train.max_grad_norm``.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = micro_batch_size * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm if max_grad_norm > 0 else 0.0


@contextmanager
def micro_batch(accelerator: Any, model: torch.nn.Module, last: bool) -> Any:
    """Around one micro-batch's forward and backward: gradients are synced (and, under DeepSpeed, the optimizer
    steps inside ``backward``) only on the ``last`` micro-batch of an optimizer step."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.gradient_state._set_sync_gradients(last)
        try:
            yield
        finally:
            accelerator.gradient_state._set_sync_gradients(True)
        return
    with accelerator.no_sync(model) if not last and accelerator.num_processes > 1 else nullcontext():
        yield


def full_tensors(accelerator: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole copies of possibly sharded parameters: FSDP2's DTensors, or ZeRO-3's partitions (gathered for the
    copy). A collective under both: every process must call it."""
    if _zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(tensors.values())):
            return {name: t.detach().clone() for name, t in tensors.items()}
    return {name: t.full_tensor() if hasattr(t, "full_tensor") else t for name, t in tensors.items()}


def _zero_stage(accelerator: Any) -> int:
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def global_sum(accelerator: Any, value: float) -> float:
    """``value`` summed over every process."""
    if accelerator.num_processes == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum").item())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed elementwise over every process of the run; ``tensor`` itself in a single process.

    For code that holds no Accelerator (a recipe's hooks) but runs inside the runner's process group. A collective
    when there are several processes: every process must call it, with a tensor of the same shape.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    summed = tensor.clone()
    dist.all_reduce(summed)
    return summed


def gather_to_main(accelerator: Any, value: Any) -> list[Any] | None:
    """Every process's ``value`` (picklable, on the CPU), in process order, on the main process; None on the others.
    A collective: every process must call it."""
    if accelerator.num_processes == 1:
        return [value]
    gathered: list[Any] | None = [None] * accelerator.num_processes if accelerator.is_main_process else None
    torch.distributed.gather_object(value, gathered, dst=0)
    return gathered


def leave_process_group() -> None:
    """Destroy the default process group, if this process joined one; call it once a run has finished everywhere.

    Left to interpreter shutdown, gloo's worker threads can still hold finished collectives whose tensors refer
    to Python objects; freeing them after the interpreter is gone aborts the process ("terminate called without
    an active exception", pytorch/pytorch#190489), which turns a finished run into a failed launch. Not called
    after an error: a process that failed alone would wait forever for the others to leave with it.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
