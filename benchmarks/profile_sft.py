"""Where a tunekit SFT step of the benchmark workload spends its time: torch.profiler over a few steps.

    python benchmarks/profile_sft.py                                    # fixed workload, fp32 on the CPU
    python benchmarks/profile_sft.py --device cuda --precision bf16 --shape 1b --packing
    python benchmarks/profile_sft.py --compile --warmup 3                # with train.compile

The run is the benchmark's tunekit side (``side_tunekit.run``: the recipe's public ``run(config)``), with a gate
that starts the profiler after ``--warmup`` steps and stops the run ``--steps`` steps later. Prints the mean step
time, the real tokens a second, and the operators that took the most self time (CPU, and CUDA on a GPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from gate import Finished  # noqa: E402
from workload import SHAPES, model_path, workload  # noqa: E402


class ProfileGate:
    """The benchmark gate's interface (``boundary``, ``record``): profile steps warmup .. warmup + steps - 1."""

    def __init__(self, warmup: int, steps: int, device: str, row_limit: int, by_shape: bool = False):
        self.warmup, self.steps, self.device, self.row_limit = warmup, steps, device, row_limit
        self.by_shape = by_shape
        self.tokens: list[float] = []
        self.profiler: torch.profiler.profile | None = None
        self.started_at = 0.0

    def record(self, units: float, tokens: float, flops: float = 0.0) -> None:
        self.tokens.append(tokens)

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def boundary(self, step: int) -> None:
        if step == self.warmup:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities, record_shapes=self.by_shape)
            self._sync()
            self.profiler.start()
            self.started_at = time.perf_counter()
        elif step == self.warmup + self.steps:
            assert self.profiler is not None
            self._sync()
            seconds = time.perf_counter() - self.started_at
            self.profiler.stop()
            self.report(seconds, sum(self.tokens[self.warmup : step]))
            raise Finished

    def report(self, seconds: float, tokens: float) -> None:
        assert self.profiler is not None
        print(
            f"{self.steps} profiled steps: {seconds / self.steps * 1000:.1f} ms a step, {tokens / seconds:.1f} "
            "real tokens/s (the profiler's own overhead included)"
        )
        averages = self.profiler.key_averages()
        keys = ["self_cpu_time_total"] + (["self_device_time_total"] if self.device == "cuda" else [])
        for key in keys:
            print(f"\nby {key}:")
            print(averages.table(sort_by=key, row_limit=self.row_limit, max_name_column_width=60))
        if self.by_shape:
            self.report_matmuls()

    def report_matmuls(self) -> None:
        """Each matmul shape's calls, self time and achieved GFLOP/s (2 M K N a call), slowest total first."""
        assert self.profiler is not None
        rows = []
        for event in self.profiler.key_averages(group_by_input_shape=True):
            if event.key not in ("aten::mm", "aten::addmm"):
                continue
            # mm(left, right[, out=]) and addmm(bias, left, right[, ...])
            left, right = event.input_shapes[1:3] if event.key == "aten::addmm" else event.input_shapes[:2]
            flops = 2 * left[0] * left[1] * right[1] * event.count
            seconds = event.self_cpu_time_total / 1e6
            rows.append((seconds, event.key, left, right, event.count, flops / max(seconds, 1e-12) / 1e9))
        print(f"\nmatmuls by shape, over all {self.steps} profiled steps (self CPU time; alone: the same shape")
        print("timed by itself right after, best of 5, the rate the step's matmul could reach at this moment):")
        print(f"{'op':<11} {'left':>14} {'right':>14} {'calls':>6} {'ms':>8} {'GFLOP/s':>8} {'alone':>8}")
        for seconds, key, left, right, count, rate in sorted(rows, key=lambda row: row[0], reverse=True)[:30]:
            alone = self.matmul_alone(left, right)
            print(
                f"{key:<11} {str(left):>14} {str(right):>14} {count:>6} {seconds * 1000:>8.1f} {rate:>8.1f} "
                f"{alone:>8.1f}"
            )

    def matmul_alone(self, left: list[int], right: list[int]) -> float:
        """GFLOP/s of one ``left x right`` matmul on this device, best of 5 after a warm-up call."""
        a = torch.randn(left, device=self.device)
        b = torch.randn(right, device=self.device)
        best = float("inf")
        for attempt in range(6):
            self._sync()
            start = time.perf_counter()
            torch.mm(a, b)
            self._sync()
            if attempt:
                best = min(best, time.perf_counter() - start)
        return 2 * left[0] * left[1] * right[1] / best / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    parser.add_argument("--packing", action="store_true", help="pack examples into rows (tunekit-packing side)")
    parser.add_argument("--weights", choices=["fp32", "bf16"], default="fp32", help="stored dtype of the base")
    parser.add_argument(
        "--per-example-attention",
        action="store_true",
        help="padding-free attention one example at a time, even where the GPU's one-call kernel applies",
    )
    parser.add_argument("--compile", action="store_true", help="train.compile (raise --warmup to 3: it compiles)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, help="read only the first ROWS rows of the data")
    parser.add_argument("--row-limit", type=int, default=25, help="operators listed per table")
    parser.add_argument("--by-shape", action="store_true", help="also list every matmul shape's time and GFLOP/s")
    args = parser.parse_args(argv)

    import side_tunekit

    if args.per_example_attention:
        from tunekit.fast import flash_varlen

        flash_varlen.usable = lambda query: False

    work = workload("sft", str(model_path(args.shape)), args.precision, args.device, args.rows, args.weights)
    gate = ProfileGate(args.warmup, args.steps, args.device, args.row_limit, args.by_shape)
    setting: dict[str, Any] = {"packing": args.packing, "compile": args.compile}
    with tempfile.TemporaryDirectory(prefix="profile-sft-") as out:
        side_tunekit.run(work, setting, gate, Path(out) / "run", args.warmup + args.steps)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
