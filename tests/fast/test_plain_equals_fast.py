"""Each recipe's step computes the same loss and the same gradients with every fast path on as with all of them off
(plain transformers + peft), so the plain path stays a working reference for the fast one.

Each case builds the recipe's own model, data and step function, runs one step on two copies of the same weights,
one through :func:`tunekit.fast.enable_fast_paths` with every path on and one with ``enabled=false``, and compares.
SFT and pretraining also change their batch layout with the paths (padding-free rows instead of padded ones), as
the recipe does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import torch

from tunekit.data import synthetic
from tunekit.data.collate import collate_examples, collate_padding_free, collate_pairs
from tunekit.data.pairs import PairDataConfig, load_pair_data
from tunekit.data.sft import DataConfig, load_sft_data
from tunekit.fast import FastPathConfig, enable_fast_paths
from tunekit.models.adapters import AdapterConfig, apply_adapter
from tunekit.models.load import ModelConfig, load_model, load_tokenizer
from tunekit.models.reference import ReferencePolicy

MODEL = ModelConfig(path="tiny-llama")
BATCH = 8


@dataclass
class Case:
    model: torch.nn.Module  # adapted, fast paths not yet decided
    step: Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]
    fast_batch: dict[str, Any]
    plain_batch: dict[str, Any]
    generates: bool = False


def moved_off_zero(model: torch.nn.Module) -> torch.nn.Module:
    """LoRA's B starts at zero, which leaves A without a gradient: move every trained weight a little."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    return model


def sft_case(data: DataConfig, rows: synthetic.Generator) -> Case:
    from tunekit.recipes.sft import sft_step

    tokenizer = load_tokenizer(MODEL.path)
    examples, _, _ = load_sft_data(data, tokenizer, 0, rows)
    batch = examples[:BATCH]
    model = moved_off_zero(apply_adapter(load_model(MODEL), AdapterConfig()))
    return Case(model, sft_step, collate_padding_free(batch), collate_examples(batch, pad_id=tokenizer.pad_token_id))


def pairs_batch() -> dict[str, Any]:
    tokenizer = load_tokenizer(MODEL.path)
    pairs, _, _ = load_pair_data(PairDataConfig(), tokenizer, 0, synthetic.preference_pairs)
    return collate_pairs(pairs[:BATCH], pad_id=tokenizer.pad_token_id)


def reward_case() -> Case:
    from tunekit.recipes.reward import reward_step

    model = moved_off_zero(apply_adapter(load_model(MODEL, head="score"), AdapterConfig(), head="score"))
    batch = pairs_batch()
    return Case(model, partial(reward_step, center_coef=0.01), batch, batch)


def dpo_case() -> Case:
    from tunekit.losses.preference import PreferenceLossConfig
    from tunekit.recipes.dpo import dpo_step

    model = moved_off_zero(apply_adapter(load_model(MODEL), AdapterConfig()))

    def step(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        # The reference is the policy with its adapter switched off, as the recipe builds it.
        return dpo_step(model, batch, PreferenceLossConfig(beta=0.2), ReferencePolicy.for_policy(model))

    batch = pairs_batch()
    return Case(model, step, batch, batch)


CASES: dict[str, Callable[[], Case]] = {
    "sft": lambda: sft_case(DataConfig(), synthetic.sft_examples),
    "pretrain": lambda: sft_case(
        __import__("tunekit.recipes.pretrain", fromlist=["PretrainConfig"]).PretrainConfig().data, synthetic.text_corpus
    ),
    "reward": reward_case,
    "dpo": dpo_case,
}


def run_step(case: Case, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss, _ = case.step(model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("recipe", list(CASES))
def test_the_step_is_the_same_with_the_fast_paths_off_and_on(recipe):
    case = CASES[recipe]()
    plain = copy.deepcopy(case.model)
    paths = enable_fast_paths(case.model, FastPathConfig(), generates=case.generates)
    assert "lean-lora" in paths.on  # the paths under test did turn on
    enable_fast_paths(plain, FastPathConfig(enabled=False), generates=case.generates)
    fast_loss, fast_grads = run_step(case, case.model, case.fast_batch)
    plain_loss, plain_grads = run_step(case, plain, case.plain_batch)
    assert fast_loss == pytest.approx(plain_loss, rel=1e-5)
    assert fast_grads.keys() == plain_grads.keys() and fast_grads
    # Summation order differs (merged LoRA weights, one row of real tokens, a trimmed last layer), so gradients
    # agree to fp32 rounding relative to each tensor's size, not element by element.
    for name, grad in plain_grads.items():
        assert (fast_grads[name] - grad).norm() <= 1e-4 * grad.norm(), name
