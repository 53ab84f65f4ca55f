"""The figures of a compare_trl.py run: ratios between its sides, the table it prints, where it ran."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

UNITS = {"sft": "tokens/s", "dpo": "pairs/s", "grpo": "completions/s"}


def rate(window: dict[str, Any]) -> float:
    """A timed window's units (tokens, pairs or completions) per second."""
    return window["units"] / window["seconds"]


def compare(sides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """tunekit / TRL throughput and peak memory: every tunekit side against every TRL side, and the fastest of
    each against the fastest of the other (the issue's measure: TRL's faster setting counts). For SFT, also the
    fastest tunekit side against the fastest bare loop (``reference``).

    Where two sides' windows held the same units (tokens, pairs or completions; for SFT unpacked and DPO, the same
    batches), a ratio also carries ``window_median``, the median of the per-window ratios: a burst of load from
    elsewhere, or one slow window, moves it far less than the summed ratio."""
    ours, theirs, bare = ([name for name in sides if name.startswith(kind)] for kind in ("tunekit", "trl", "bare"))
    best_ours, best_theirs = (max(names, key=lambda name: sides[name]["throughput"]) for names in (ours, theirs))

    def ratio(a: str, b: str) -> dict[str, float]:
        out = {
            "throughput": sides[a]["throughput"] / sides[b]["throughput"],
            "peak_memory": sides[a]["peak_memory_mb"] / sides[b]["peak_memory_mb"],
        }
        if sides[a]["window_units"] == sides[b]["window_units"]:
            pairs = zip(sides[a]["window_throughputs"], sides[b]["window_throughputs"], strict=True)
            out["window_median"] = statistics.median(x / y for x, y in pairs)
        return out

    result = {
        "best_tunekit": best_ours,
        "best_trl": best_theirs,
        "best": ratio(best_ours, best_theirs),
        "pairs": {f"{a} / {b}": ratio(a, b) for a in ours for b in theirs},
    }
    if bare:
        best_bare = max(bare, key=lambda name: sides[name]["throughput"])
        result["reference"] = {"best_bare": best_bare, **ratio(best_ours, best_bare)}
    return result


def machine(device: str) -> dict[str, Any]:
    """The platform, CPU model and core count, and the GPU's name when the run used one."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": platform.processor()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict[str, str]:
    """The versions of the libraries both sides stand on, and the commit of the tunekit measured."""
    from importlib.metadata import version

    out = {name: version(name) for name in ("torch", "transformers", "peft", "trl", "accelerate")}
    try:
        root = Path(__file__).resolve().parents[1]
        out["tunekit_commit"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["tunekit_commit"] = "unknown"
    return out


def print_table(result: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """One row per side, then every tunekit / TRL ratio, as the run's JSON holds them."""
    unit = UNITS[result["recipe"]]
    print(
        f"\n{result['recipe']} ({result['precision']}, {result['weights']} weights, {result['device']}, model "
        f"{result['model']}): "
        f"{result['windows']} windows of {result['window_steps']} steps per side, alternating",
        file=out,
    )
    header = f"{'side':<16}{unit:>16}{'peak MB':>10}{'final loss':>12}"
    if result["recipe"] == "sft":
        header += f"{'MFU':>8}"
    print(header, file=out)
    for name, side in result["sides"].items():
        loss = "-" if side["final_loss"] is None else f"{side['final_loss']:.4f}"
        row = f"{name:<16}{side['throughput']:>16.4g}{side['peak_memory_mb']:>10.0f}{loss:>12}"
        if result["recipe"] == "sft" and side.get("mfu") is not None:
            row += f"{side['mfu']:>8.1%}"
        print(row, file=out)
    ratios = result["ratios"]
    for pair, ratio in ratios["pairs"].items():
        print(f"{pair}: {describe(ratio)}", file=out)
    best = ratios["best_tunekit"]
    print(f"fastest ({best}) / fastest TRL ({ratios['best_trl']}): {describe(ratios['best'])}", file=out)
    if "reference" in ratios:
        reference = ratios["reference"]
        print(f"fastest ({best}) / fastest bare loop ({reference['best_bare']}): {describe(reference)}", file=out)
    if result["matmul_flops_per_s"]:
        print(f"plain matmul: {result['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s ({result['precision']})", file=out)


def describe(ratio: dict[str, float]) -> str:
    """A ratio as a phrase: "2.31x throughput (per-window median 2.25x), 0.48x peak memory"."""
    text = f"{ratio['throughput']:.2f}x throughput"
    if "window_median" in ratio:
        text += f" (per-window median {ratio['window_median']:.2f}x)"
    return text + f", {ratio['peak_memory']:.2f}x peak memory"
