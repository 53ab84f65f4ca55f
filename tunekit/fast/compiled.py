"""torch.compile for the transformer blocks of a training run (``train.compile``).

What inductor buys here is fusion: a LLaMA block in eager mode makes a dozen passes over [tokens, hidden] tensors
around its matmuls (RMSNorm's square, mean, rsqrt and two multiplies; rotary's halves, negation and sums; SwiGLU;
the residual adds), each again in the backward. Compiled, those become a few generated loops, and the matmuls stay
on the same BLAS calls.

Each decoder block is compiled on its own, in place: the module tree, parameter names, state dict and adapter files
do not change, so checkpoints and exports are those of an eager run. The compiled forward serves only forwards that
build a graph for a backward; evaluation, reference log-probs and ``generate`` run eager, so that generation's KV
cache objects never reach the compiler and no-grad passes add no graphs of their own. Rollouts through tunekit's
own decoding loop get a compiled per-token step of their own when the run compiled its blocks
(:func:`tunekit.fast.decode.compiled_step`). Attention over padding-free batches stays outside the graph
(:mod:`tunekit.fast.varlen` loops over the batch's examples in Python), and shapes are compiled as dynamic, so a
new batch length does not recompile.

The first steps pay for compilation (tens of seconds on a CPU); the steps after gain the fused elementwise work
(docs/benchmarks.md has the measured ratio). Opt-in for that reason: a short run may never earn the cost back.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import torch

from tunekit.errors import ConfigError

# Enough for the variants a run meets (the first block's input carries no gradient and the others' do; an adapter
# switched on or off) without letting a pathological input recompile forever: past it, dynamo runs the block eagerly.
_RECOMPILE_LIMIT = 16


def check_compile_supported() -> None:
    """Refuse ``train.compile`` where it cannot work, before anything is written: under a sharded engine (FSDP and
    DeepSpeed gather weights in hooks around the very modules compiled here; ``accelerate launch`` says which
    engine in the environment), or on a CPU with no C++ compiler for inductor's generated code."""
    sharded = any(os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true" for name in ("FSDP", "DEEPSPEED"))
    if sharded:
        raise ConfigError(
            "train.compile=true is not supported with FSDP or DeepSpeed in tunekit; set train.compile=false"
        )
    if torch.cuda.is_available():
        return
    compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if compiler is None or shutil.which(compiler) is None:
        raise ConfigError(
            "train.compile=true on the CPU needs a C++ compiler (g++ or clang++ on PATH, or $CXX) for the code "
            "torch.compile generates; install one or set train.compile=false"
        )


def compile_layers(model: torch.nn.Module) -> int:
    """Compile every transformer block of ``model`` (transformers' decoder layers) for training forwards.

    ``model`` may be a transformers model or a peft / DDP wrapper of one. Returns how many blocks were compiled
    (0 for a model with none, which then trains as it is).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for block in blocks:
        if getattr(block.forward, "tunekit_compiled", False):
            continue
        block.forward = _training_only(block.forward, torch.compile(block.forward, dynamic=True))
    return len(blocks)


def _training_only(eager: Callable[..., Any], compiled: Callable[..., Any]) -> Callable[..., Any]:
    """A forward that runs ``compiled`` when autograd records (a training forward) and ``eager`` otherwise."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return compiled(*args, **kwargs) if torch.is_grad_enabled() else eager(*args, **kwargs)

    forward.tunekit_compiled = True  # type: ignore[attr-defined]
    return forward
