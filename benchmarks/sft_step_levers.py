"""Two levers of tunekit's SFT step, switched on and off on the same batches in one process.

    python benchmarks/sft_step_levers.py [--compile] [--batches 6] [--rounds 4]

The levers: LoRA on the merged weight (``tunekit.fast.lean_lora.merges``) and the last layer at label rows
only (``tunekit.fast.last_layer``). Four variants (neither, each alone, both) train the benchmark model on the
same fixed batches of the SFT workload (8 GSM8K examples each, padding-free), taking turns batch by batch and
reversing their order every other batch. The script prints each variant's real tokens/s and its speed over
"neither": the ratio of the summed step times, and the median of the per-batch ratios. With ``--compile`` the
blocks are compiled as ``train.compile`` does; each variant compiles in the warm-up.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import side_tunekit  # noqa: E402
import torch  # noqa: E402
from workload import model_path, workload  # noqa: E402

from tunekit.config import from_dict  # noqa: E402
from tunekit.fast import last_layer, lean_lora  # noqa: E402
from tunekit.fast.compiled import compile_layers  # noqa: E402

VARIANTS = {"neither": (False, False), "merged LoRA": (True, False), "last layer": (False, True), "both": (True, True)}


class Done(Exception):
    """Ends the recipe's run once the timings are printed."""


MERGES = lean_lora.merges


def switch(model: torch.nn.Module, merged: bool, trimmed: bool) -> None:
    """Turn the two levers on or off."""
    lean_lora.merges = MERGES if merged else (lambda *args: False)
    setattr(model.get_base_model().model.layers[-1], last_layer._MARK, trimmed)


def timed(args: argparse.Namespace) -> Any:
    """A stand-in for the runner's ``train``: the recipe's own model, data, collate and step, timed per variant."""

    def train(spec: Any, model: torch.nn.Module, step_fn: Any) -> None:
        if not last_layer.installed(model):
            raise SystemExit("the model's last layer is not of a layout tunekit trims")
        if args.compile:
            compile_layers(model)
        items = list(spec.items)
        random.Random(0).shuffle(items)
        batches = [spec.collate(items[i * 8 : (i + 1) * 8]) for i in range(args.batches)]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        model.train()

        def step(batch: dict[str, Any]) -> float:
            start = time.perf_counter()
            loss, _ = step_fn(model, batch)
            (loss / batch["num_items"]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        for levers in VARIANTS.values():  # warm-up, and compilation
            switch(model, *levers)
            for batch in batches[:2]:
                step(batch)
        seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for round_ in range(args.rounds):
            for index, batch in enumerate(batches):
                names = list(VARIANTS) if (round_ + index) % 2 == 0 else list(VARIANTS)[::-1]
                for name in names:
                    switch(model, *VARIANTS[name])
                    seconds[name].append(step(batch))
        tokens = args.rounds * sum(int(batch["num_tokens"]) for batch in batches)
        base = seconds["neither"]
        for name, times in seconds.items():
            ratios = sorted(b / t for b, t in zip(base, times, strict=True))
            print(
                f"{name:12s} {tokens / sum(times):7.1f} tokens/s   vs neither: {sum(base) / sum(times):.3f}x summed, "
                f"{ratios[len(ratios) // 2]:.3f}x median of {len(ratios)} batches"
            )
        raise Done

    return train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="compile the blocks as train.compile does")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    work = workload("sft", str(model_path("bench")), "fp32", "cpu", None, "fp32")
    recipe = importlib.import_module("tunekit.recipes.sft")
    with tempfile.TemporaryDirectory(prefix="sft-levers-") as out:
        setting = {"packing": False, "compile": False}
        config = from_dict(recipe.SFTConfig, side_tunekit.config_dict(work, setting, Path(out) / "run", 1))
        recipe.train = timed(args)
        try:
            recipe.run(config)
        except Done:
            pass


if __name__ == "__main__":
    main()
