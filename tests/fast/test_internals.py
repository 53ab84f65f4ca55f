"""The private internals of torch, transformers and peft that the fast paths rely on hold on the installed
versions; run this first after upgrading any of them (docs/fast-paths.md)."""

from __future__ import annotations

import torch

from tunekit.fast import FastPathConfig, enable_fast_paths, internals
from tunekit.models.adapters import AdapterConfig, apply_adapter
from tunekit.models.load import ModelConfig, load_model
from tunekit.models.tiny import tiny_model_path


def adapted():
    return apply_adapter(load_model(ModelConfig(path=str(tiny_model_path("tiny-llama")))), AdapterConfig())


def test_the_internals_the_paths_rely_on_hold_on_the_installed_libraries():
    broken = internals.broken_assumptions()
    versions = {name: internals.installed_version(name) for name in internals.TESTED}
    assert not broken, f"installed {versions}, tested {internals.TESTED}: {broken}"


def test_a_changed_peft_forward_breaks_the_lean_lora_assumption(monkeypatch):
    from peft.tuners.lora.layer import Linear

    real = Linear.forward
    monkeypatch.setattr(Linear, "forward", lambda self, x, *a, **k: real(self, x, *a, **k) * 2)
    assert not internals._lean_lora_matches_peft()


def test_a_broken_assumption_turns_its_path_off_and_says_which_library(monkeypatch):
    failing = internals.Assumption("lean-lora", "peft", "something peft no longer has", lambda: False)
    monkeypatch.setattr(internals, "ASSUMPTIONS", (failing,))
    internals.broken_assumptions.cache_clear()
    try:
        paths = enable_fast_paths(adapted(), FastPathConfig())
    finally:
        internals.broken_assumptions.cache_clear()
    assert "lean-lora" not in paths.on
    assert "peft" in paths.off["lean-lora"] and "tested with peft" in paths.off["lean-lora"]
    assert "padding-free" in paths.on  # the other paths are untouched


def test_checking_the_internals_leaves_the_runs_random_stream_alone():
    internals.broken_assumptions.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    internals.broken_assumptions()
    assert torch.equal(torch.rand(4), expected)
