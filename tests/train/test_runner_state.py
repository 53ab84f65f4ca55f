"""A recipe's own state (RunSpec.state) rides in every checkpoint and comes back on resume, before the first step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from tunekit.train.runner import train
from tunekit.train.spec import RunSpec, TrainConfig


class Counter:
    """Counts the training steps it has seen; a stand-in for PPO's KL coefficient and the like."""

    def __init__(self) -> None:
        self.steps = 0
        self.loaded: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"steps_seen": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded.append(dict(state))
        self.steps = state["steps_seen"]

    def step(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        self.steps += 1
        return (model(batch["x"]) ** 2).sum(), {}


@dataclass
class TinyConfig:
    name: str = "state"


def spec(out, state: Any, max_steps: int, resume_from=None) -> RunSpec:
    items = [torch.tensor([float(i)]) for i in range(8)]
    return RunSpec(
        output_dir=out,
        config=TinyConfig(),
        train=TrainConfig(micro_batch_size=2, epochs=1, lr=0.1, save_every=2, keep_checkpoints=0, progress=False),
        seed=0,
        max_steps=max_steps,
        resume_from=resume_from,
        items=items,
        collate=lambda xs: {"x": torch.stack(xs), "num_items": torch.tensor(len(xs))},
        state=state,
    )


def test_the_state_is_saved_beside_the_runners_and_restored_on_resume(tmp_path):
    counter = Counter()
    train(spec(tmp_path, counter, max_steps=4), torch.nn.Linear(1, 1), counter.step)
    saved = json.loads((tmp_path / "checkpoints" / "step-2" / "state.json").read_text())
    assert saved["steps_seen"] == 2 and saved["step"] == 2 and {"epoch", "rng"} <= saved.keys()
    assert json.loads((tmp_path / "checkpoints" / "step-4" / "state.json").read_text())["steps_seen"] == 4
    assert counter.loaded == []  # a fresh run restores nothing

    resumed = Counter()
    checkpoint = tmp_path / "checkpoints" / "step-2"
    train(spec(tmp_path, resumed, max_steps=4, resume_from=checkpoint), torch.nn.Linear(1, 1), resumed.step)
    assert resumed.loaded == [{"steps_seen": 2}]  # the recipe's part only, without the runner's keys
    assert resumed.steps == 4


def test_a_state_that_uses_the_runners_keys_is_refused(tmp_path):
    class Clash(Counter):
        def state_dict(self) -> dict[str, Any]:
            return {"step": self.steps}

    clash = Clash()
    with pytest.raises(ValueError, match=r"runner's keys \['step'\]"):
        train(spec(tmp_path, clash, max_steps=2), torch.nn.Linear(1, 1), clash.step)
