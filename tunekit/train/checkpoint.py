"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and data position, written atomically.

Layout of ``<output_dir>/checkpoints/step-<N>/``:

    trainable.safetensors   every parameter that receives gradients (adapter and heads, or all weights)
    optimizer.pt            optimizer state (tensors and numbers only; loaded with weights_only=True)
    scheduler.pt            learning-rate scheduler state
    state.json              step, epoch, RNG states and the recipe's own state (RunSpec.state), side by side
    experience.pt           only part-way through a batch's PPO/GRPO passes: the batch (tunekit/train/experience.py)
    COMPLETE                written last: the size and SHA-256 of every other file (JSON); a directory without it
                            is ignored and cleaned up

A checkpoint is written under a temporary name and renamed into place only when complete, so a run killed at any
moment leaves either the previous checkpoints or the new one, never a half-written directory that resume would
trust. What the disk does to a checkpoint later (a truncated copy, a bad sector, a hand edit) is caught by
:func:`checkpoint_damage`, which compares the files with the sizes and checksums in COMPLETE before anything is
restored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunekit.errors import ConfigError, UserError
from tunekit.train.rng import capture_rng, restore_rng

COMPLETE_MARKER = "COMPLETE"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, say); the run stops with the earlier checkpoints intact."""


# The keys of state.json that are the runner's; every other key belongs to the recipe's state.
RUNNER_KEYS = frozenset({"step", "epoch", "rng", "spikes"})
_ALWAYS_WRITTEN = ("trainable.safetensors", "scheduler.pt", "state.json")
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


def checkpoint_damage(path: Path) -> str | None:
    """Why checkpoint ``path`` cannot be trusted (a file missing, cut short or changed since it was written), or
    None when every file matches the size and SHA-256 that its COMPLETE marker recorded.

    A marker written before markers held checksums (empty) vouches for nothing more than completeness; such a
    checkpoint is only checked for the files every checkpoint has.
    """
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return "it has no COMPLETE marker (its write never finished)"
    text = marker.read_text(errors="replace").strip()
    if not text:
        missing = [name for name in _ALWAYS_WRITTEN if not (path / name).is_file()]
        return f"{missing[0]} is missing" if missing else None
    try:
        recorded = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        return f"its {COMPLETE_MARKER} marker is not the file list tunekit writes"
    for name, expected in sorted(recorded.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes; {expected['bytes']} were written"
        if _sha256(file) != expected["sha256"]:
            return f"{name} differs from what was written (checksum mismatch)"
    return None


def resumable_checkpoint(output_dir: Path, warn: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint in ``output_dir`` that is intact, for ``resume=auto``.

    Damaged newer ones are passed over, each with a warning through ``warn`` naming it and what is wrong; the run
    then continues from the one before (or from the start when none is intact), and its next saves replace them.
    """
    for path in reversed(complete_checkpoints(output_dir)):
        damage = checkpoint_damage(path)
        if damage is None:
            return path
        warn(f"warning: checkpoint {path} is damaged ({damage}); it is skipped and the run resumes from an earlier one")
    return None


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
    prune_checkpoints(output_dir, keep, newest_step=step)
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
    recorded = {}
    for written in sorted(tmp.iterdir()):
        _fsync(written)
        recorded[written.name] = {"bytes": written.stat().st_size, "sha256": _sha256(written)}
    (tmp / COMPLETE_MARKER).write_text(json.dumps({"files": recorded}, indent=1))
    _fsync(tmp / COMPLETE_MARKER)
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


def prune_checkpoints(output_dir: Path, keep: int, newest_step: int | None = None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and any leftover temporary directories.

    ``newest_step`` is the step just saved. Checkpoints past it belong to a stretch of the run that was abandoned
    (it resumed from an earlier checkpoint, because a newer one was damaged or the user chose an older one): they
    are deleted too, since the run has now written its own history past that point, and counting them would let
    ``keep`` prune the checkpoints of the run that is going on.
    """
    root = checkpoint_root(output_dir)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    found = complete_checkpoints(output_dir)
    if newest_step is not None:
        for abandoned in [p for p in found if _step_of(p) > newest_step]:
            shutil.rmtree(abandoned, ignore_errors=True)
        found = [p for p in found if _step_of(p) <= newest_step]
    if keep > 0:
        for old in found[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _step_of(path: Path) -> int:
    return int(path.name.split("-")[1])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


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
