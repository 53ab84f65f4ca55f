"""The seam in front of the fast paths: one entry point, one switch per path, reasons for what stays off."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tunekit.data.prompts import PromptExample
from tunekit.fast import PATHS, PLAIN, FastPathConfig, enable_fast_paths, fast_paths_of, varlen
from tunekit.models.adapters import AdapterConfig, apply_adapter
from tunekit.models.load import ModelConfig, load_model
from tunekit.models.tiny import tiny_model_path
from tunekit.rl.rollout import SamplingConfig, generate_rollout

ALL = ["lean-lora", "padding-free", "trimmed-last-layer", "own-decoder", "packed-decode"]


def adapted(method: str = "lora", name: str = "tiny-llama") -> torch.nn.Module:
    return apply_adapter(load_model(ModelConfig(path=str(tiny_model_path(name)))), AdapterConfig(method=method))


def lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if type(m) is Linear]


def test_every_path_turns_on_for_lora_on_a_llama_model():
    model = adapted()
    paths = enable_fast_paths(model, FastPathConfig())
    assert paths.on == ALL and not paths.off
    assert fast_paths_of(model) is paths
    assert paths.summary() == "fast paths: " + ", ".join(ALL)
    assert paths.resolved(FastPathConfig()) == FastPathConfig()


def test_all_off_is_plain_transformers_and_peft():
    model = adapted()
    paths = enable_fast_paths(model, FastPathConfig(enabled=False))
    assert paths.on == [] and set(paths.off) == set(ALL)
    # No LoRA layer's forward replaced, no attention swapped, no layer wrapped.
    assert all("forward" not in vars(layer) for layer in lora_layers(model))
    assert model.get_base_model().config._attn_implementation == "sdpa"
    assert all("forward" not in vars(layer) for layer in model.get_base_model().model.layers)
    assert paths.resolved(FastPathConfig(enabled=False)) == FastPathConfig(enabled=False)


@pytest.mark.parametrize("switch", list(PATHS))
def test_each_switch_turns_its_path_off(switch):
    config = dataclasses.replace(FastPathConfig(), **{switch: False})
    paths = enable_fast_paths(adapted(), config)
    assert PATHS[switch] not in paths.on
    assert paths.off[PATHS[switch]] == f"model.fast_paths.{switch}=false"
    assert getattr(paths.resolved(config), switch) is False


def test_paths_that_build_on_another_go_off_with_it():
    paths = enable_fast_paths(adapted(), FastPathConfig(padding_free=False, own_decoder=False))
    assert paths.off["trimmed-last-layer"] == "needs padding-free"
    assert paths.off["packed-decode"] == "needs own-decoder"


def test_a_path_that_cannot_apply_says_why():
    paths = enable_fast_paths(adapted("ia3"), FastPathConfig())
    assert paths.off["lean-lora"].startswith("no plain LoRA layer")
    assert enable_fast_paths(adapted("dora"), FastPathConfig()).off["lean-lora"].startswith("no plain LoRA layer")
    assert enable_fast_paths(adapted("full"), FastPathConfig()).off["lean-lora"].startswith("no adapter")
    assert paths.resolved(FastPathConfig()).lean_lora is False  # config.yaml records what ran
    prompted = enable_fast_paths(adapted("prompt_tuning"), FastPathConfig())
    assert "adds tokens" in prompted.off["padding-free"]
    assert "changes what attention sees" in prompted.off["own-decoder"]


def test_without_rollouts_the_decoding_paths_are_left_out():
    paths = enable_fast_paths(adapted(), FastPathConfig(), generates=False)
    assert paths.on == ["lean-lora", "padding-free", "trimmed-last-layer"] and not paths.off


def test_a_model_never_passed_through_the_seam_runs_plain():
    model = adapted()
    assert fast_paths_of(model) is PLAIN
    assert not varlen.enabled(model)


def test_a_rollout_the_own_decoder_cannot_take_says_so_once(capsys, monkeypatch):
    from tunekit import fast
    from tunekit.fast import decode

    monkeypatch.setattr(fast, "_NOTED", set())
    model = adapted(name="tiny-mistral")
    enable_fast_paths(model, FastPathConfig())
    model.get_base_model().config.sliding_window = 8  # shorter than prompt plus completion
    from tunekit.models.load import load_tokenizer

    tokenizer = load_tokenizer("tiny-mistral")
    ids = tokenizer("3 + 4 =")["input_ids"]
    prompts = [PromptExample(prompt="3 + 4 =", prompt_ids=ids, columns={}, index=0)]
    used = []
    real = decode.decode_turn
    monkeypatch.setattr("tunekit.rl.rollout.decode_turn", lambda *a, **k: used.append(1) or real(*a, **k))
    for _ in range(2):
        generate_rollout(model, tokenizer, prompts, SamplingConfig(num_generations=2, max_new_tokens=6))
    assert not used  # transformers' generate ran both rollouts
    noted = capsys.readouterr().err
    assert noted.count("fast path own-decoder: the sliding window (8) is shorter") == 1


def test_a_frozen_reference_copy_runs_its_own_weights_with_the_fast_paths_on():
    """Full fine-tuning keeps a deep copy as the reference; the patched forwards must belong to the copy."""
    import copy

    from tunekit.models.logprobs import token_logps
    from tunekit.models.reference import ReferencePolicy

    policy = adapted("full")
    reference = ReferencePolicy.for_policy(policy)
    enable_fast_paths(reference.frozen, FastPathConfig(), generates=False)
    enable_fast_paths(policy, FastPathConfig())
    twin = copy.deepcopy(policy)  # a copy made after the paths are on must be independent too
    ids = torch.randint(3, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    batch["labels"][:, :4] = -100

    def logps(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return token_logps(model, batch)[0]

    start = reference.run(policy, logps)
    assert torch.allclose(logps(twin), start, atol=1e-6)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    assert torch.equal(reference.run(policy, logps), start)
    assert torch.allclose(logps(twin), start, atol=1e-6)
    assert not torch.allclose(logps(policy), start, atol=1e-3)
