"""The last layer computed at the kept rows only gives the logits and gradients of the full last layer."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunekit.fast import FastPathConfig, enable_fast_paths, last_layer
from tunekit.models.logprobs import logits_at
from tunekit.models.tiny import tiny_model_path

# Plain examples and shared prompts with two and three continuations (tunekit.fast.varlen's segments).
SEGMENTS = [(30,), (12, 9, 7), (25,), (6, 4, 5, 3)]
# Unsorted, and the last token of a shared prompt (rows 41 and 88) predicts the first token of each continuation.
POSITIONS = [5, 6, 7, 29, 41, 42, 43, 44, 41, 50, 51, 60, 61, 82, 88, 94, 88, 99, 100, 88]


def lora_model(name: str, window: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path(name))
    if window is not None:
        base.config.sliding_window = window
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    assert enable_fast_paths(model, FastPathConfig()).uses("trimmed-last-layer") and last_layer.installed(model)
    return model


def row() -> tuple[torch.Tensor, torch.Tensor]:
    """A padding-free row of SEGMENTS: input ids and position ids, both [1, N]."""
    torch.manual_seed(1)
    positions = []
    for prompt, *continuations in SEGMENTS:
        positions += [torch.arange(prompt)] + [prompt + torch.arange(n) for n in continuations]
    position_ids = torch.cat(positions)[None]
    return torch.randint(3, 400, position_ids.shape), position_ids


def logits_and_grads(model: torch.nn.Module, trimmed: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """logits_at at POSITIONS, with the last layer trimmed or computing every row; and the adapters' gradients."""
    model.zero_grad(set_to_none=True)
    layer = model.get_base_model().model.layers[-1]
    query_rows: list[int] = []
    hook = layer.self_attn.q_proj.register_forward_hook(lambda m, args, out: query_rows.append(args[0].shape[1]))
    setattr(layer, last_layer._MARK, trimmed)
    try:
        ids, position_ids = row()
        logits = logits_at(model, ids, position_ids, SEGMENTS, torch.tensor(POSITIONS))
    finally:
        setattr(layer, last_layer._MARK, True)
        hook.remove()
    # The last layer's queries: one per distinct kept row when trimmed, every token otherwise.
    assert query_rows == [len(set(POSITIONS)) if trimmed else ids.shape[1]]
    logits.square().mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize(
    ("name", "window"),
    [("tiny-llama", None), ("tiny-mistral", None), ("tiny-mistral", 8)],
    ids=["llama", "mistral", "mistral-window-8"],
)
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_trimmed_last_layer_gives_the_full_layers_logits_and_gradients(name, window, checkpointing):
    model = lora_model(name, window)
    if checkpointing:
        model.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    full, full_grads = logits_and_grads(model, trimmed=False)
    trimmed, trimmed_grads = logits_and_grads(model, trimmed=True)
    assert trimmed.shape == (len(POSITIONS), model.config.vocab_size)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
    assert len(trimmed_grads) == len(full_grads) > 0
    for got, expected in zip(trimmed_grads, full_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_other_forwards_run_the_whole_layer():
    """Without keep_rows (generation, padded batches, evaluation) the wrapped layer is the layer as it was."""
    model = lora_model("tiny-llama")
    ids = torch.randint(3, 400, (2, 16))
    with torch.no_grad():
        wrapped = model(input_ids=ids).logits
        del model.get_base_model().model.layers[-1].forward  # the class's own forward
        assert torch.equal(model(input_ids=ids).logits, wrapped)


def test_models_of_other_layouts_are_left_alone():
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path("tiny-llama"))
    model.config.model_type = "gemma"  # a layout the trimmed forward does not know
    assert "gemma" in last_layer.unsupported(model)
    assert not enable_fast_paths(model, FastPathConfig()).uses("trimmed-last-layer")
    assert not last_layer.installed(model)
