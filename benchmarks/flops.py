"""Model FLOPs of an SFT step, and the FLOP/s of a plain matmul on the same device, for MFU.

Counted per real (non-padding) token, as the issue asks: forward 2N, backward 2N for the activation gradients,
plus 2N for weight gradients where weights are trained (with LoRA only the adapters), plus attention. N covers
the transformer layers' linear weights; the output head counts only at positions that have a label (the loss
needs no logits elsewhere), and its weight is frozen. Attention is counted causally (half of the L x L scores):
forward 2 * L^2 * hidden per layer for QK^T and AV together, backward twice that. The same count is used for
both sides, so MFU compares implementations of one workload.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    vocab: int
    # Per token: weights of the linear layers in all transformer layers, and of their LoRA adapters.
    linear_params: int
    lora_params: int

    @classmethod
    def from_model_dir(cls, path: str | Path, lora_r: int) -> Dims:
        config = json.loads((Path(path) / "config.json").read_text())
        hidden, inter = config["hidden_size"], config["intermediate_size"]
        head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
        q = config["num_attention_heads"] * head_dim
        kv = config["num_key_value_heads"] * head_dim
        # (in, out) of q, k, v, o, gate, up, down.
        shapes = [
            (hidden, q),
            (hidden, kv),
            (hidden, kv),
            (q, hidden),
            (hidden, inter),
            (hidden, inter),
            (inter, hidden),
        ]
        layers = config["num_hidden_layers"]
        return cls(
            hidden=hidden,
            layers=layers,
            vocab=config["vocab_size"],
            linear_params=layers * sum(i * o for i, o in shapes),
            lora_params=layers * sum(lora_r * (i + o) for i, o in shapes),
        )


def sft_step_flops(dims: Dims, lengths: list[int], label_tokens: int) -> float:
    """Model FLOPs of one training step on examples of ``lengths`` real tokens with ``label_tokens`` labels."""
    tokens = sum(lengths)
    linear = tokens * (4 * dims.linear_params + 6 * dims.lora_params)
    head = label_tokens * 4 * dims.hidden * dims.vocab
    attention = sum(6 * length * length * dims.hidden for length in lengths) * dims.layers
    return float(linear + head + attention)


def matmul_flops_per_s(
    precision: str, device: str, seconds: float = 2.0, size: int = 2048, threads: int | None = None
) -> float:
    """FLOP/s of a plain [size, size] x [size, size] matmul in ``precision`` on ``device`` (best of a few runs),
    on ``threads`` CPU threads (default: torch's)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if device == "cuda":
        size = max(size, 8192)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    a @ b  # warm-up
    while time.perf_counter() < deadline or best == 0.0:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best
