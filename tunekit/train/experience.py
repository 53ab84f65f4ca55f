"""The rollouts a run trains on for several steps, kept in a checkpoint taken between those steps.

PPO and GRPO with several passes take ``passes_per_batch`` optimizer steps on one prepared batch of experience
(rollouts, their scores, old and reference log-probs). A checkpoint taken part-way through those steps (by
``train.save_every`` or a preemption signal) must carry that experience: sampled again on resume, from a policy that
has already moved, it would be other rollouts with other old log-probs, and the resumed run would not be the run
that was interrupted. Each process's share is saved, in process order, in ``experience.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunekit.train.engines import gather_to_main

EXPERIENCE_FILE = "experience.pt"


def experience_to_save(
    accelerator: Any, prepared: list[dict[str, Any]] | None, step: int, passes_per_batch: int
) -> dict[str, Any]:
    """``{EXPERIENCE_FILE: [each process's batches]}`` for a checkpoint at ``step`` (after that many optimizer
    steps) that falls inside a batch's passes, on the main process; ``{}`` elsewhere. A collective then."""
    if prepared is None or step % passes_per_batch == 0:
        return {}
    gathered = gather_to_main(accelerator, _map_tensors(prepared, lambda t: t.detach().cpu()))
    return {EXPERIENCE_FILE: gathered} if gathered is not None else {}


def restore_experience(
    accelerator: Any, checkpoint: Path, step: int, passes_per_batch: int
) -> list[dict[str, Any]] | None:
    """This process's batches saved by :func:`experience_to_save` in ``checkpoint``, on its device; None where the
    run resumes at the start of a batch (or the checkpoint holds none: its batch is prepared again, with a note)."""
    if step % passes_per_batch == 0:
        return None
    path = checkpoint / EXPERIENCE_FILE
    shares = torch.load(path, weights_only=True) if path.exists() else None
    if shares is None or len(shares) != accelerator.num_processes:
        why = "holds no rollouts" if shares is None else f"was written by {len(shares)} processes"
        accelerator.print(
            f"note: checkpoint {checkpoint} falls inside a batch's {passes_per_batch} passes but {why}; the batch is "
            "sampled again, so this resumed run will not repeat the interrupted one exactly"
        )
        return None
    return _map_tensors(shares[accelerator.process_index], lambda t: t.to(accelerator.device))


def _map_tensors(value: Any, fn: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value
