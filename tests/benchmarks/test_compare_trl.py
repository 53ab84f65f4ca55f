"""The quick version of benchmarks/compare_trl.py: tiny shapes, a few steps, every recipe; figures, never speed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import compare_trl  # noqa: E402

QUICK = [
    "--shape=tiny",
    "--rows=48",
    "--steps=2",
    "--windows=2",
    "--warmup=1",
    "--matmul-seconds=0.1",
    "--quiet",
    # One thread per side: eight processes start at once, and tiny ops pay dearly for idle thread waits.
    "--threads=1",
]
SIDE_FIELDS = {
    "throughput",
    "unit",
    "seconds",
    "steps",
    "units",
    "real_tokens",
    "window_throughputs",
    "window_units",
    "peak_memory_mb",
    "final_loss",
    "losses",
}


SIDES = {
    "sft": {"tunekit", "tunekit-packing", "trl", "trl-packing", "bare"},
    "dpo": {"tunekit", "trl"},
    "grpo": {"tunekit", "trl"},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory, shared_data):
    # All three at once: their workers start together, which keeps the quick version quick.
    out = tmp_path_factory.mktemp("compare") / "out.json"
    results = compare_trl.main(["--recipe=sft,dpo,grpo", *QUICK, f"--json={out}"])
    assert json.loads(out.read_text()).keys() == results.keys() == SIDES.keys()
    return results


@pytest.mark.parametrize("recipe", sorted(SIDES))
def test_quick_comparison_reports_every_figure_and_both_sides_train(results, recipe):
    result, sides = results[recipe], SIDES[recipe]
    assert result["recipe"] == recipe
    assert set(result) >= {"recipe", "precision", "device", "workload", "sides", "ratios", "machine", "versions"}
    assert set(result["sides"]) == sides
    for name, side in result["sides"].items():
        assert set(side) >= SIDE_FIELDS, name
        # Warm-up plus two timed steps, each with a finite loss, and a positive rate for every window.
        assert len(side["losses"]) == 3, (name, side["losses"])
        assert all(math.isfinite(loss) for loss in side["losses"]), (name, side["losses"])
        assert side["steps"] == 2 and side["throughput"] > 0 and side["peak_memory_mb"] > 0
        assert all(rate > 0 for rate in side["window_throughputs"])
    ratios = result["ratios"]
    assert ratios["best_tunekit"].startswith("tunekit") and ratios["best_trl"].startswith("trl")
    ours, theirs = {n for n in sides if n.startswith("tunekit")}, {n for n in sides if n.startswith("trl")}
    assert set(ratios["pairs"]) == {f"{a} / {b}" for a in ours for b in theirs}
    for ratio in [ratios["best"], *ratios["pairs"].values()]:
        assert ratio["throughput"] > 0 and ratio["peak_memory"] > 0
    if recipe == "sft":
        assert result["matmul_flops_per_s"] > 0
        assert all(0 < side["mfu"] for side in result["sides"].values())
    if recipe in ("sft", "dpo"):
        # Same examples in the same order and the same hyperparameters: the first step (before any update) has
        # the same loss on both sides, and the next ones stay close.
        ours, theirs = result["sides"]["tunekit"]["losses"], result["sides"]["trl"]["losses"]
        assert ours[0] == pytest.approx(theirs[0], rel=1e-4)
        assert ours == pytest.approx(theirs, rel=1e-2)
    if recipe == "sft":
        # Both count real tokens the same way: the same examples hold the same number of them.
        assert result["sides"]["tunekit"]["real_tokens"] == result["sides"]["trl"]["real_tokens"]
        # The bare loop lays the same examples end to end in 8 equal rows: it drops at most 7 tokens a step.
        tokens, bare = result["sides"]["tunekit"]["real_tokens"], result["sides"]["bare"]["real_tokens"]
        assert tokens - 7 * 2 <= bare <= tokens
        assert ratios["reference"]["best_bare"] == "bare" and ratios["reference"]["throughput"] > 0
    if recipe in ("sft", "dpo"):
        # The same batches in every window: the per-window ratio's median is reported beside the summed one.
        assert ratios["pairs"]["tunekit / trl"]["window_median"] > 0


@pytest.mark.parametrize("recipe", sorted(SIDES))
def test_compile_adds_one_compiled_side_each_beside_the_eager_ones(recipe):
    sides = {name: (side, setting) for name, side, setting in compare_trl.sides_for(recipe, False, compile=True)}
    compiled = {"tunekit-compile", "trl-compile"} | ({"bare-compile"} if recipe == "sft" else set())
    assert set(sides) == SIDES[recipe] | compiled
    for name, (_side, setting) in sides.items():
        assert setting.get("compile", False) == name.endswith("-compile")
        assert not setting.get("packing", False) or not setting.get("compile", False)
    assert sides["tunekit-compile"][0] == "tunekit" and sides["trl-compile"][0] == "trl"
