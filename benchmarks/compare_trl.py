"""tunekit against TRL on the same model, data and hyperparameters, alternating in one run.

    python benchmarks/compare_trl.py --recipe sft                 # fixed workload, fp32 on the CPU
    python benchmarks/compare_trl.py --recipe dpo --steps 8 --json dpo.json
    python benchmarks/compare_trl.py --recipe sft --device cuda --precision bf16 --shape 1b

Each side (tunekit, and TRL in each of its settings: for SFT packing off and on) trains in its own process. SFT
also runs the issue's bare hand-written loop on the same tokens (``side_bare.py``), a reference for what the
model's own arithmetic runs at on this machine. After a few warm-up steps every side waits at a gate; then the
sides take turns, one timed window of steps each, for ``--windows`` rounds (the order reversed every other round),
so that load from elsewhere on a shared machine falls on all of them. Printed and written as JSON: throughput (SFT
real tokens/s, DPO pairs/s, GRPO completions/s), peak memory (resident set on the CPU, allocated memory on a GPU),
final loss, the ratios tunekit / TRL (summed over the windows, and the median of the per-window ratios where the
windows held the same work), and for SFT the model FLOP/s as a fraction of a plain matmul's (MFU). See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# This checkout's tunekit, whatever else is installed: the benchmark measures the code beside it.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from report import UNITS, compare, machine, print_table, rate, versions  # noqa: E402
from workload import SHAPES, model_path, workload  # noqa: E402

DEFAULT_STEPS = {"sft": 12, "dpo": 8, "grpo": 8}


def sides_for(recipe: str, trl_checkpointing: bool, compile: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, side, setting) of every contender. TRL's configs default to gradient checkpointing on; it trades
    speed for memory, so it is off unless asked for, like tunekit's.

    With ``compile``, each side also runs compiled (tunekit's ``train.compile``, TRL's ``torch_compile``), so
    that the fastest setting of each, compiled or not, is the one compared.
    """
    trl = {"gradient_checkpointing": trl_checkpointing}
    if recipe == "sft":
        # Packing changes what a step holds (8 rows of up to max_length tokens rather than 8 examples), so each
        # side runs both ways, and each packed side is compared with the other's packed side too.
        sides = [
            ("tunekit", "tunekit", {"packing": False}),
            ("tunekit-packing", "tunekit", {"packing": True}),
            ("trl", "trl", {**trl, "packing": False}),
            ("trl-packing", "trl", {**trl, "packing": True}),
            # The "bare hand-written loop" on the same tokens (benchmarks/side_bare.py): a reference for
            # what the model's arithmetic alone runs at here, not a contender.
            ("bare", "bare", {}),
        ]
    else:
        sides = [("tunekit", "tunekit", {}), ("trl", "trl", trl)]
    if compile:
        # The unpacked (or only) setting of each side, compiled.
        kinds = ("tunekit", "trl", "bare") if recipe == "sft" else ("tunekit", "trl")
        plain = [next(entry for entry in sides if entry[1] == side) for side in kinds]
        sides += [(f"{name}-compile", side, {**setting, "compile": True}) for name, side, setting in plain]
    return sides


class Worker:
    """A side's process and its protocol pipe."""

    def __init__(
        self, name: str, side: str, setting: dict, schedule: Schedule, work_json: str, root: Path, threads: int | None
    ):
        self.name = name
        self.log_path = root / f"{name}.log"
        command = [
            sys.executable,
            str(Path(__file__).resolve().parent / "worker.py"),
            f"--side={side}",
            f"--setting={json.dumps(setting)}",
            f"--workload={work_json}",
            f"--warmup={schedule.warmup}",
            f"--window={schedule.window}",
            f"--windows={schedule.windows}",
            f"--output-dir={root / name}",
        ]
        self.log = self.log_path.open("w")
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1, env=env
        )
        self.windows: list[dict[str, Any]] = []
        self.peak_memory_mb = 0.0
        self.losses: list[float] = []

    def read(self, event: str) -> dict[str, Any]:
        """The next protocol message, which must be ``event``; a crashed worker raises with its log's tail."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            self.peak_memory_mb = max(self.peak_memory_mb, float(message.get("peak_memory_mb", 0.0)))
            if message["event"] == "started":
                continue
            if message["event"] == "error":
                raise RuntimeError(f"{self.name} failed: {message['error']}\n{message['traceback']}")
            if message["event"] != event:
                raise RuntimeError(f"{self.name}: expected {event}, got {message}")
            return message
        self.log.flush()
        tail = self.log_path.read_text()[-3000:]
        raise RuntimeError(f"{self.name} exited (code {self.proc.wait()}) before {event}; its log ends:\n{tail}")

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass(frozen=True)
class Schedule:
    """Untimed warm-up steps, then ``windows`` timed windows of ``window`` steps for every side."""

    warmup: int
    window: int
    windows: int


def schedule_for(args: argparse.Namespace, recipe: str) -> Schedule:
    steps = args.steps or DEFAULT_STEPS[recipe]
    windows = max(1, min(args.windows, steps))
    return Schedule(args.warmup, -(-steps // windows), windows)


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every recipe of ``args.recipe``: its sides' figures, summarised (see :func:`summarise`)."""
    model = args.model or str(model_path(args.shape))
    works = {
        recipe: workload(recipe, model, args.precision, args.device, args.rows, args.weights) for recipe in args.recipes
    }
    roots = {r: Path(tempfile.mkdtemp(prefix=f"compare-trl-{r}-", dir=args.work_dir)) for r in args.recipes}
    workers: dict[str, list[Worker]] = {recipe: [] for recipe in args.recipes}
    results = {}
    try:
        # All started together: warm-up (imports, loading, first steps) is never timed, and every worker waits at
        # its gate until the driver lets it run a window.
        for recipe in args.recipes:
            for name, side, setting in sides_for(recipe, args.trl_gradient_checkpointing, args.compile):
                say(args, f"{recipe}: starting {name} ({setting or 'defaults'}), warm-up of {args.warmup} steps")
                schedule = schedule_for(args, recipe)
                worker = Worker(name, side, setting, schedule, works[recipe].to_json(), roots[recipe], args.threads)
                workers[recipe].append(worker)
        # Nothing is timed until every worker of every recipe has finished its warm-up: a worker still warming
        # up would take cores from the windows being timed.
        for worker in (w for group in workers.values() for w in group):
            worker.read("boundary")
        for recipe in args.recipes:
            matmul = alternate(args, recipe, workers[recipe])
            results[recipe] = summarise(args, recipe, works[recipe].to_json(), workers[recipe], matmul)
            results[recipe]["logs"] = str(roots[recipe])
    finally:
        for worker in (w for group in workers.values() for w in group):
            worker.close()
    return results


def alternate(args: argparse.Namespace, recipe: str, workers: list[Worker]) -> list[float]:
    """Run the timed windows, one side at a time, the order reversed every other round; for SFT, measure a plain
    matmul after each round. Returns the matmul FLOP/s measured."""
    from flops import matmul_flops_per_s

    schedule = schedule_for(args, recipe)
    matmul: list[float] = []
    for round_index in range(schedule.windows):
        order = workers if round_index % 2 == 0 else workers[::-1]
        for worker in order:
            worker.command("go")
            window = worker.read("boundary")
            worker.windows.append(window)
            say(args, f"{recipe} round {round_index + 1}/{schedule.windows} {worker.name}: {rate(window):.4g}")
        if recipe == "sft":
            matmul.append(matmul_flops_per_s(args.precision, args.device, args.matmul_seconds, threads=args.threads))
    for worker in workers:
        worker.losses = worker.read("done")["losses"]
        worker.proc.wait(timeout=120)
    return matmul


def summarise(
    args: argparse.Namespace, recipe: str, work_json: str, workers: list[Worker], matmul: list[float]
) -> dict:
    sides: dict[str, dict[str, Any]] = {}
    peak_matmul = sorted(matmul)[len(matmul) // 2] if matmul else None
    for worker in workers:
        seconds = sum(w["seconds"] for w in worker.windows)
        units = sum(w["units"] for w in worker.windows)
        flops = sum(w.get("flops", 0.0) for w in worker.windows)
        entry = {
            "throughput": units / seconds,
            "unit": UNITS[recipe],
            "seconds": seconds,
            "steps": sum(w["steps"] for w in worker.windows),
            "units": units,
            "real_tokens": sum(w["tokens"] for w in worker.windows),
            "window_throughputs": [rate(w) for w in worker.windows],
            "window_units": [w["units"] for w in worker.windows],
            "peak_memory_mb": worker.peak_memory_mb,
            "final_loss": worker.losses[-1] if worker.losses else None,
            "losses": worker.losses,
        }
        if recipe == "sft":
            entry["model_flops_per_s"] = flops / seconds
            entry["mfu"] = flops / seconds / peak_matmul if peak_matmul else None
        sides[worker.name] = entry
    ratios = compare(sides)
    schedule = schedule_for(args, recipe)
    return {
        "recipe": recipe,
        "precision": args.precision,
        "weights": args.weights,
        "device": args.device,
        "model": args.model or args.shape,
        "workload": json.loads(work_json),
        "warmup_steps": schedule.warmup,
        "window_steps": schedule.window,
        "windows": schedule.windows,
        "matmul_flops_per_s": peak_matmul,
        "sides": sides,
        "ratios": ratios,
        "machine": machine(args.device),
        "versions": versions(),
    }


def say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--recipe",
        required=True,
        help="sft, dpo or grpo, or several separated by commas (their workers start together)",
    )
    parser.add_argument("--steps", type=int, help="timed steps per side (default: sft 12, dpo 8, grpo 8)")
    parser.add_argument("--windows", type=int, default=4, help="alternating windows the timed steps split into")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the first window")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--weights",
        choices=["fp32", "bf16"],
        default="fp32",
        help="stored dtype of the base weights on both sides (bf16 goes with --precision bf16)",
    )
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="bench", help="model built offline (see workload.py)"
    )
    parser.add_argument("--model", help="a local Hugging Face model directory instead of --shape")
    parser.add_argument("--rows", type=int, help="read only the first ROWS rows of the data (quick runs)")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL's default; off otherwise")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="one more side each: tunekit with train.compile, TRL with torch_compile (raise --warmup: compiling "
        "takes the first steps)",
    )
    parser.add_argument("--matmul-seconds", type=float, default=2.0)
    parser.add_argument(
        "--threads", type=int, help="CPU threads of each side (default: torch's, one per core); tiny shapes want 1"
    )
    parser.add_argument("--work-dir", help="where run directories and worker logs go (default: a temp dir)")
    parser.add_argument("--json", help="also write the figures to this file (keyed by recipe if several)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.recipes = [r.strip() for r in args.recipe.split(",") if r.strip()]
    unknown = [r for r in args.recipes if r not in UNITS]
    if unknown or not args.recipes or args.warmup < 1:
        parser.error(f"--recipe takes {', '.join(sorted(UNITS))} (got {args.recipe!r}); --warmup at least 1")
    if args.weights == "bf16" and args.precision != "bf16":
        parser.error("--weights bf16 goes with --precision bf16")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the comparison; returns one recipe's figures, or {recipe: figures} for several."""
    args = parse_args(argv)
    results = run(args)
    for result in results.values():
        print_table(result)
    out = results[args.recipes[0]] if len(args.recipes) == 1 else results
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
