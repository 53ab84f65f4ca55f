"""Masked whitening, alone and with its statistics summed across processes."""

from __future__ import annotations

import math
import os
import tempfile

import torch
import torch.multiprocessing as mp

from tunekit.losses.reduce import masked_whiten
from tunekit.train.engines import all_reduce_sum

VALUES = torch.tensor([[1.0, 2.0, 3.0], [5.0, 100.0, -100.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_masked_whiten_by_hand():
    # Masked values 1, 2, 3, 5: mean 2.75; squared deviations 3.0625, 0.5625, 0.0625, 5.0625 -> variance 2.1875.
    mean, std = 2.75, math.sqrt(2.1875 + 1e-8)
    expected = (VALUES - mean) / std
    assert torch.allclose(masked_whiten(VALUES, MASK), expected, atol=1e-6)
    assert torch.allclose(masked_whiten(VALUES, MASK, shift_mean=False), expected + mean, atol=1e-5)
    whitened = masked_whiten(VALUES, MASK)[MASK.bool()]
    assert abs(whitened.mean().item()) < 1e-6 and abs(whitened.var(correction=0).item() - 1) < 1e-6


def test_summing_within_one_process_changes_nothing():
    assert torch.equal(masked_whiten(VALUES, MASK, sum_across=all_reduce_sum), masked_whiten(VALUES, MASK))


def _whiten_half(rank: int, init_file: str, values: torch.Tensor, mask: torch.Tensor, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rows = slice(0, 2) if rank == 0 else slice(2, None)
    torch.save(masked_whiten(values[rows], mask[rows], sum_across=all_reduce_sum), f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_processes_whiten_with_the_whole_batch_statistics():
    generator = torch.Generator().manual_seed(0)
    values = 3.0 + 2.0 * torch.randn(5, 6, generator=generator)
    mask = torch.rand(5, 6, generator=generator) > 0.3
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "half")
        mp.spawn(_whiten_half, args=(os.path.join(tmp, "init"), values, mask, out), nprocs=2)
        halves = torch.cat([torch.load(f"{out}.{rank}") for rank in (0, 1)])
    assert torch.allclose(halves, masked_whiten(values, mask), atol=1e-6)
