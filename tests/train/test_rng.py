"""Generator state: saved and restored through a checkpoint's JSON, and kept apart from seeded evaluations."""

import json
import random

import torch

from tunekit.train import rng


def draws():
    return random.random(), torch.rand(3).tolist()


def test_a_restored_state_draws_what_the_saved_one_would_have():
    saved = json.loads(json.dumps(rng.capture_rng()))  # as state.json stores it
    expected = draws()
    draws()
    rng.restore_rng(saved)
    assert draws() == expected


def test_a_seeded_evaluation_gives_training_its_generators_back():
    state = rng.capture_rng()
    expected = draws()
    rng.restore_rng(state)
    with rng.seeded_rng(0):
        first = torch.rand(3).tolist()
    with rng.seeded_rng(0):
        assert torch.rand(3).tolist() == first  # the same samples at every evaluation
    assert draws() == expected  # and training's stream is untouched


def test_cuda_generators_are_saved_and_restored(monkeypatch):
    """On a GPU, rollouts sample from the CUDA generator: a checkpoint must carry it (no GPU here, so the CUDA
    calls are stood in for)."""
    states = [torch.arange(16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    saved = json.loads(json.dumps(rng.capture_rng()))
    assert saved["cuda"] == [list(range(16))]
    rng.restore_rng(saved)
    assert len(restored) == 1 and torch.equal(restored[0], states[0])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # another machine: the states do not apply
    restored.clear()
    rng.restore_rng(saved)
    assert restored == []
