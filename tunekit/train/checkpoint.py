"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and data position, written atomically.

Layout of ``<output_dir>/checkpoints/step-<N>/``:

    trainable.safetensors   every parameter that receives gradients (adapter and heads, or all weights)
    optimizer.pt            optimizer state (tensors and numbers only; loaded with weights_only=True)
    scheduler.pt            learning-rate scheduler state
    state.json              step, epoch, RNG states and the recipe's own state (RunSpec.state), side by side
    experience.pt           only part-way through a batch's PPO/GRPO passes: the batch (tunekit/train/experience.py)
    COMPLETE                written last; a directory without it is ignored and cleaned up

A checkpoint is written under a temporary name and renamed into place only when complete, so a run killed at any
moment leaves either the previous checkpoints or the new one, never a half-written directory that resume would
trust.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunekit.errors import ConfigError, UserError
from tunekit.train.rng import capture_rng, restore_rng

COMPLETE_MARKER = "COMPLETE"


# The keys of state.json that are the runner's; every other key belongs to the recipe's state.
class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, say); the run stops with the earlier checkpoints intact."""


RUNNER_KEYS = frozenset({"step", "epoch", "rng", "spikes"})
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
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, then prune to the newest ``keep`` complete ones (0 keeps all).

    ``optimizer`` None leaves its state out (a sharded run, whose moments are split across processes).
    ``extra_files`` maps file names to objects written with ``torch.save`` (tensors, numbers, strings, lists and
    dicts of them, so that they load with ``weights_only=True``).
    """
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_checkpoint_files(tmp, step, trainable, optimizer, scheduler, state, extra_files)
    except BaseException as err:
        # Nothing half-written stays behind, whatever stopped the write; the older checkpoints are untouched.
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError | SafetensorError):  # a full disk, a lost mount: the user's to fix
            raise CheckpointWriteError(
                f"checkpoint step-{step} could not be written in {root}: {err}. The partial copy was removed and "
                "the earlier checkpoints are intact; free some space and continue with resume=auto"
            ) from None
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    prune_checkpoints(output_dir, keep)
    return final


def _write_checkpoint_files(
    tmp: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    state: dict[str, Any],
    extra_files: dict[str, Any] | None,
) -> None:
    """Every file of checkpoint ``step`` into the new folder ``tmp``, the COMPLETE marker last."""
    tmp.mkdir()
    # safetensors refuses tensors that share storage; detached contiguous copies are always safe.
    save_file({k: v.detach().contiguous().clone() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for name, value in (extra_files or {}).items():
        torch.save(value, tmp / name)
    full_state = {**state, "step": step, "rng": capture_rng()}
    (tmp / "state.json").write_text(json.dumps(full_state))
    # Every file reaches the disk before the marker that vouches for them exists: after a power loss, a
    # checkpoint marked complete never holds a truncated file.
    for written in tmp.iterdir():
        _fsync(written)
    (tmp / COMPLETE_MARKER).write_text("")
    _fsync(tmp)


def run_state(epoch: float, recipe_state: dict[str, Any], spikes: list[float] | None = None) -> dict[str, Any]:
    """The ``state`` to save beside step and RNG: the epoch, the loss-spike detector's recent losses and the
    recipe's own state, all at the top level."""
    clash = RUNNER_KEYS & set(recipe_state)
    if clash:
        raise ValueError(f"a recipe's checkpointed state may not use the runner's keys {sorted(clash)}")
    return {"epoch": epoch, "spikes": spikes or [], **recipe_state}


def recipe_state(state: dict[str, Any]) -> dict[str, Any]:
    """The recipe's own part of a checkpoint's state.json (what :func:`run_state` saved beside the runner's)."""
    return {key: value for key, value in state.items() if key not in RUNNER_KEYS}


def checkpoint_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json: its ``step``, ``epoch``, RNG states and what the recipe added."""
    return json.loads((path / "state.json").read_text())


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer (unless None, or saved without one by a sharded run), scheduler and RNG from
    ``path``; returns its state.json."""
    weights = load_file(str(path / "trainable.safetensors"))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    _check_weights_fit(path, weights, trainable)
    saved_optimizer = None
    if optimizer is not None and (path / "optimizer.pt").exists():
        saved_optimizer = torch.load(path / "optimizer.pt", weights_only=True)
        _check_optimizer_fits(path, saved_optimizer, optimizer)
    # Everything is checked before anything is restored: a refused resume leaves the model as it was.
    with torch.no_grad():
        for name, tensor in weights.items():
            trainable[name].copy_(tensor)
    if saved_optimizer is not None:
        optimizer.load_state_dict(saved_optimizer)  # type: ignore[union-attr]
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    # The rate the schedule last set lives in the optimizer's groups, which a sharded resume does not restore:
    # without this its first step would run at the schedule's starting rate.
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
    state = checkpoint_state(path)
    restore_rng(state["rng"])
    return state


def _check_weights_fit(path: Path, weights: dict[str, torch.Tensor], trainable: dict[str, torch.Tensor]) -> None:
    """The checkpoint's weights must be exactly this model's trainable parameters, shape for shape: a resume with
    another adapter (rank, method, target modules) or another base would otherwise fail deep inside torch, or
    worse, restore part of the run."""
    hint = "resume with the model and adapter settings of the run that wrote it (its config.yaml), or start afresh"
    unexpected = sorted(set(weights) - set(trainable))
    if unexpected:
        raise ConfigError(
            f"checkpoint {path} holds {len(unexpected)} weights this model does not train, e.g. {unexpected[0]}; "
            + hint
        )
    absent = sorted(set(trainable) - set(weights))
    if absent:
        raise ConfigError(
            f"checkpoint {path} lacks {len(absent)} of this model's trainable weights, e.g. {absent[0]}; " + hint
        )
    for name, tensor in weights.items():
        if tensor.shape != trainable[name].shape:
            raise ConfigError(
                f"checkpoint {path}: {name} has shape {list(tensor.shape)}, this model's has "
                f"{list(trainable[name].shape)}; " + hint
            )


def _check_optimizer_fits(path: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer state must be of this run's optimizer kind (train.optimizer), over as many parameters."""
    saved_groups, groups = saved.get("param_groups", []), optimizer.state_dict()["param_groups"]
    same_kind = [set(g) for g in saved_groups] == [set(g) for g in groups]
    same_sizes = [len(g["params"]) for g in saved_groups] == [len(g["params"]) for g in groups]
    if not (same_kind and same_sizes):
        raise ConfigError(
            f"checkpoint {path}: its optimizer state ({type(optimizer).__name__} expected) was written by another "
            "train.optimizer or for other parameters; resume with the run's own train.optimizer (its config.yaml)"
        )


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and any leftover temporary directories."""
    root = checkpoint_root(output_dir)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep > 0:
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to the disk (where the file system allows it)."""
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
