"""The floor under a GRPO decode step on the CPU: the benchmark model's linear layers at 8 rows, cache-cold.

    python benchmarks/decode_floor.py [--rows 8] [--rounds 3]

One decode step of the fixed GRPO workload multiplies 8 rows (one new token per completion) by every weight of
the model: 8 layers of q, k, v, o, gate, up and down, then the output head, about 110 MB in fp32. That is more
than the cache holds, so each step streams the weights from memory. This script times exactly those matmuls,
weights allocated separately as in the model, and compares the rate they read memory at with what a plain
streaming reduction reaches on the same cores. Four matmul paths are timed side by side in each round: torch's
default (``F.linear``, MKL here), MKL's packed GEMM, oneDNN's inner product on oneDNN tensors, and oneDNN's
linear on plain tensors with weights reordered once for the row count, which tunekit's rollouts use on the CPU
(``tunekit.fast.packed_decode.packed_linears``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

# (out_features, in_features) of one LLaMA block of the benchmark shape: q, k, v, o, gate, up, down.
BLOCK = [(512, 512), (256, 512), (256, 512), (512, 512), (1376, 512), (1376, 512), (512, 1376)]
LAYERS, VOCAB = 8, 8192


def seconds(fn: Callable[[], object], reps: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="rows a decode step (completions decoded at once)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    weights = [torch.randn(o, i) for _ in range(LAYERS) for o, i in BLOCK] + [torch.randn(VOCAB, 512)]
    megabytes = sum(w.numel() for w in weights) * 4 / 1e6
    inputs = {i: torch.randn(args.rows, i) for i in (512, 1376)}
    packed = [torch.ops.mkl._mkl_reorder_linear_weight(w, args.rows) for w in weights]
    dnnl_weights = [w.to_mkldnn() for w in weights]
    dnnl_inputs = {i: x.to_mkldnn() for i, x in inputs.items()}
    reordered = [torch.ops.mkldnn._reorder_linear_weight(w, args.rows) for w in weights]
    stream = torch.randn(100_000_000)  # 400 MB

    paths: dict[str, Callable[[], object]] = {
        "F.linear": lambda: [F.linear(inputs[w.shape[1]], w) for w in weights],
        "MKL packed": lambda: [
            torch.ops.mkl._mkl_linear(inputs[w.shape[1]], p, w, None, args.rows)
            for w, p in zip(weights, packed, strict=True)
        ],
        "oneDNN": lambda: [torch._C._nn.mkldnn_linear(dnnl_inputs[w.shape[1]], w, None) for w in dnnl_weights],
        "oneDNN reordered": lambda: [
            torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], r, None, "none", [], "")
            for w, r in zip(weights, reordered, strict=True)
        ],
    }
    print(f"{torch.get_num_threads()} threads, {args.rows} rows, {megabytes:.0f} MB of weights a decode step")
    for r in range(args.rounds):
        sum_s = seconds(stream.sum, 5)
        line = [f"round {r}: streaming sum {400 / sum_s / 1000:.1f} GB/s"]
        for name, fn in paths.items():
            s = seconds(fn, args.reps)
            line.append(f"{name} {s * 1000:.1f} ms ({megabytes / s / 1000:.1f} GB/s)")
        print(" | ".join(line))


if __name__ == "__main__":
    main()
