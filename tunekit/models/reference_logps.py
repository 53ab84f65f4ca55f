"""Reference log-probs of preference pairs, computed once before training and kept in the run directory.

DPO with ``reference=precompute`` scores every pair under the reference policy once, instead of at every step.
The scores go to ``<output_dir>/reference_logps.safetensors`` with a fingerprint of what they were computed from:
the pairs' token ids, in order, and the reference model's settings. A resumed run reuses them only when both
match; changed data, seed, length limits or model settings compute them afresh, never attaching one pair's
reference to another.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tunekit.data.collate import to_device
from tunekit.data.pairs import PairExample
from tunekit.models.logprobs import sequence_logps
from tunekit.models.reference import ReferencePolicy

REFERENCE_FILE = "reference_logps.safetensors"


def precompute_reference(
    output_dir: Path,
    model: torch.nn.Module,
    reference: ReferencePolicy,
    splits: dict[str, list[PairExample]],
    collate: Any,
    batch_size: int,
    settings: str,
    say: Any = print,
) -> None:
    """Attach reference log-probs to every pair of every split, reusing the run directory's where they were
    computed from the same pairs and ``settings`` (a description of the reference model). Only the main process
    writes the file."""
    path = output_dir / REFERENCE_FILE
    saved, saved_for = _load(path)
    computed, fingerprints = {}, {}
    for name, pairs in splits.items():
        if not pairs:
            continue
        fingerprints[name] = _fingerprint(pairs, settings)
        if saved_for.get(name) == fingerprints[name]:
            logps = saved[name]
        else:
            say(f"precomputing reference log-probs for {len(pairs)} {name} pairs")
            logps = reference_logps(model, reference, pairs, collate, batch_size)
        computed[name] = logps
        attach_reference(pairs, logps)
    if os.environ.get("RANK", "0") == "0" and computed:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(computed, str(tmp), metadata=fingerprints)
        tmp.replace(path)


def reference_logps(
    model: torch.nn.Module, reference: ReferencePolicy, pairs: list[PairExample], collate: Any, batch_size: int
) -> torch.Tensor:
    """[N, 2] reference log-probs (chosen, rejected) of ``pairs``, in batches on the model's device."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(pairs), batch_size):
        batch = to_device(collate(pairs[start : start + batch_size]), device)
        sums, _ = reference.run(model, lambda m, b=batch: sequence_logps(m, b))
        out.append(torch.stack(sums.chunk(2), dim=1).float().cpu())
    return torch.cat(out)


def attach_reference(pairs: list[PairExample], logps: torch.Tensor) -> list[PairExample]:
    for pair, (chosen, rejected) in zip(pairs, logps.tolist(), strict=True):
        pair.ref_logps = (chosen, rejected)
    return pairs


def _fingerprint(pairs: list[PairExample], settings: str) -> str:
    digest = hashlib.sha256(settings.encode())
    for pair in pairs:
        digest.update(json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]).encode())
    return digest.hexdigest()


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The saved tensors and the fingerprint each was computed for (none for a file without them)."""
    if not path.is_file():
        return {}, {}
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})
