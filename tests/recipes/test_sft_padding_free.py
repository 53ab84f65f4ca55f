"""SFT with padding-free batches trains exactly like SFT on padded batches: the same losses, step by step."""

import pytest

from tunekit.config import load_config
from tunekit.recipes.sft import SFTConfig, run

FAST = [
    "data.synthetic_size=32",
    "data.eval_fraction=0",
    "train.progress=false",
    "train.optimizer=sgd",
    "train.lr=0.5",
    "max_steps=3",
]


def losses(out, *extra):
    result = run(load_config(SFTConfig, None, [f"output_dir={out}", *FAST, *extra]))
    return [r["loss"] for r in result.history if "loss" in r]


@pytest.mark.parametrize(
    "layout",
    [
        ["data.packing=false", "train.micro_batch_size=8"],
        # Packed rows of a few examples each, two rows a step.
        ["data.packing=true", "data.max_length=96", "train.micro_batch_size=2"],
    ],
)
def test_padding_free_losses_equal_padded_losses(tmp_path, layout):
    padded = losses(tmp_path / "padded", *layout, "model.fast_paths.padding_free=false")
    free = losses(tmp_path / "free", *layout, "model.fast_paths.padding_free=true")
    assert len(free) == 3
    # Plain SGD updates linearly in the gradient, so rounding differences stay rounding differences.
    assert free == pytest.approx(padded, rel=1e-4)
    assert free[-1] < free[0]
