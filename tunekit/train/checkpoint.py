"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and data position, written atomically.

Layout of ``<output_dir>/checkpoints/step-<N>/``:

    trainable.safetensors   every parameter that receives gradients (adapter and heads, or all weights)
    optimizer.pt            optimizer state (tensors and numbers only; loaded with weights_only=True)
    scheduler.pt            learning-rate scheduler state
    state.json              step, epoch, RNG states and whatever the recipe adds
    COMPLETE                written last; a directory without it is ignored and cleaned up

A checkpoint is written under a temporary name and renamed into place only when complete, so a run killed at any
moment leaves either the previous checkpoints or the new one, never a half-written directory that resume would
trust.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

COMPLETE_MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically, then prune to the newest ``keep`` complete ones (0 keeps all).

    ``optimizer`` None leaves its state out (a sharded run, whose moments are split across processes).
    """
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # safetensors refuses tensors that share storage; detached contiguous copies are always safe.
    save_file({k: v.detach().contiguous().clone() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    full_state = {**state, "step": step, "rng": capture_rng()}
    (tmp / "state.json").write_text(json.dumps(full_state))
    (tmp / COMPLETE_MARKER).write_text("")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    prune_checkpoints(output_dir, keep)
    return final


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer (unless None, or saved without one by a sharded run), scheduler and RNG from
    ``path``; returns its state.json."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing:
        raise ValueError(f"checkpoint {path} has weights this model lacks: {missing[:5]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    if optimizer is not None and (path / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    # The rate the schedule last set lives in the optimizer's groups, which a sharded resume does not restore:
    # without this its first step would run at the schedule's starting rate.
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
    state = json.loads((path / "state.json").read_text())
    restore_rng(state["rng"])
    return state


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and any leftover temporary directories."""
    root = checkpoint_root(output_dir)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep > 0:
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def capture_rng() -> dict[str, Any]:
    return {"python": _jsonable(random.getstate()), "torch": torch.get_rng_state().tolist()}


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
