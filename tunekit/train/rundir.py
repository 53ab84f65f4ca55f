"""Checks on the run directory, made before anything is written to it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tunekit.errors import ConfigError
from tunekit.train.checkpoint import COMPLETE_MARKER, checkpoint_damage, resumable_checkpoint


def prepare_output_dir(output_dir: Path, resume: str | None, warn: Callable[[str], None] = print) -> Path | None:
    """Check ``output_dir`` before anything is written; return the checkpoint to resume from, if any.

    Every checkpoint is verified against the checksums it was saved with before it is chosen: ``resume=auto``
    passes over damaged ones (through ``warn``), and ``resume=<path>`` naming a damaged one is refused.
    """
    if resume not in (None, "auto"):
        path = Path(resume)
        if not (path / COMPLETE_MARKER).is_file():
            raise ConfigError(f"resume={resume!r} is not a complete checkpoint directory (no {COMPLETE_MARKER} marker)")
        damage = checkpoint_damage(path)
        if damage is not None:
            raise ConfigError(
                f"resume={resume!r} names a damaged checkpoint: {damage}; resume from an earlier checkpoint "
                "of the run, or with resume=auto, which takes the newest intact one"
            )
        return path
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {output_dir} is a file, not a folder; choose another output_dir")
    if output_dir.exists() and any(output_dir.iterdir()):
        if resume == "auto":
            return resumable_checkpoint(output_dir, warn)
        raise ConfigError(
            f"output_dir {output_dir} already holds a run; pass resume=auto to continue it, "
            "or choose another output_dir"
        )
    return None


def check_room_for_checkpoints(output_dir: Path, checkpoint_bytes: int) -> None:
    """``output_dir`` (or the folder it will be made in) must be writable and hold a checkpoint with room to spare.

    ``checkpoint_bytes`` is the expected size of one checkpoint; twice that is asked for, since the new checkpoint
    is written in full before the oldest is pruned.
    """
    existing = output_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"output_dir {output_dir} cannot be created or written: {existing} is not a writable folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"output_dir {output_dir} is not writable: {err}") from None
    free = shutil.disk_usage(existing).free
    needed = 2 * checkpoint_bytes + (16 << 20)
    if free < needed:
        raise ConfigError(
            f"output_dir {output_dir} has {free / 2**20:.0f} MiB free, and this run needs {needed / 2**20:.0f} "
            f"MiB: room for two checkpoints of about {checkpoint_bytes / 2**20:.0f} MiB each (a new one is written "
            "in full before the older one is pruned) plus 16 MiB for logs and the final save's margin"
        )
