"""Mixed precision for the training and held-out evaluation forwards of a run.

``train.mixed_precision`` (bf16 or fp16) runs the model under autocast. peft's adapter layers cast their input to
the adapter's dtype (fp32) before the adapter's matmuls, which autocast then casts back to half precision: two
copies of every adapted layer's input in the forward, one of them kept for the backward. Under autocast that
round trip changes nothing (the matmul sees the same half-precision values either way), so :func:`compute` turns
peft's cast off while autocast is on. With the base weights stored in bf16, the base layer and its adapter then
share one saved input, which is most of an adapted model's activation memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def compute(accelerator: Any, model: torch.nn.Module) -> Iterator[None]:
    """The run's precision for the forwards inside: accelerate's autocast and, when it is on, no input casts in
    the adapter layers (restored on the way out, so that a forward outside autocast still gets them)."""
    if accelerator.mixed_precision == "no":
        yield
        return
    layers = [m for m in model.modules() if getattr(m, "cast_input_dtype_enabled", False)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        with accelerator.autocast():
            yield
    finally:
        for layer in layers:
            layer.cast_input_dtype_enabled = True
