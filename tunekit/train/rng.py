"""Random number generator state: saved in checkpoints, and set aside around seeded evaluations.

Rollouts sample from torch's default generator of the device they run on, so a GPU run's CUDA generators belong in a
checkpoint as much as the CPU's: without them a resumed GPU run samples other completions than the run it continues.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def capture_rng() -> dict[str, Any]:
    """The Python, torch CPU and (when CUDA is in use) every CUDA device's generator state, as JSON-ready lists."""
    state: dict[str, Any] = {"python": _jsonable(random.getstate()), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the generators :func:`capture_rng` saved. CUDA states are restored where this process sees as many
    devices as the one that saved them."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the body with every generator seeded with ``seed`` (an evaluation that samples the same way each
    time), then give training its generators back as they were, CUDA's included."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value
