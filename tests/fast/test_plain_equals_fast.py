"""Each recipe's step computes the same loss and the same gradients with every fast path on as with all of them off
(plain transformers + peft), so the plain path stays a working reference for the fast one.

Each case builds the recipe's own model, data and step function, runs one step on two copies of the same weights,
one through :func:`tunekit.fast.enable_fast_paths` with every path on and one with ``enabled=false``, and compares.
GRPO and PPO prepare their batch (rollouts, old and reference log-probs, values) once, on the plain side.
SFT and pretraining also change their batch layout with the paths (padding-free rows instead of padded ones), as
the recipe does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
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
from tunekit.recipes.pretrain import PretrainConfig

MODEL = ModelConfig(path="tiny-llama")
BATCH = 8


@dataclass
class Case:
    model: torch.nn.Module  # adapted, fast paths not yet decided
    step: Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]
    fast_batch: dict[str, Any] | None = None
    plain_batch: dict[str, Any] | None = None
    # RL: the batch is prepared (rollouts, advantages, old and reference log-probs) by the plain side, once.
    prepare: Callable[[torch.nn.Module], dict[str, Any]] | None = None
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


def prompts_and_rewards() -> tuple[Any, list[Any], list[Any]]:
    from tunekit.data.prompts import PromptDataConfig, load_prompts
    from tunekit.rl.rewards import RewardSource, load_reward_sources

    tokenizer = load_tokenizer(MODEL.path)
    prompts = load_prompts(PromptDataConfig(synthetic_size=32), tokenizer, 0).train
    rewards = load_reward_sources([RewardSource(name="length_penalty", kwargs={"target_chars": 4})])
    return tokenizer, prompts[:4], rewards


def with_random_advantages(batch: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    """The tiny model's completions often score alike, which leaves no advantage to push with."""
    batch["advantages"] = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    return batch


def grpo_case(tmp: Path) -> Case:
    from tunekit.models.policy import build_policy
    from tunekit.rl.grpo import GRPOLossConfig, GRPOTrainer
    from tunekit.rl.rollout import SamplingConfig
    from tunekit.rl.samples import SampleLog

    tokenizer, prompts, rewards = prompts_and_rewards()
    model = moved_off_zero(build_policy(MODEL, reference_adapter=True))
    trainer = GRPOTrainer(
        GRPOLossConfig(passes=2),  # old log-probs of their own, not the step's detached ones
        SamplingConfig(num_generations=4, max_new_tokens=8),
        seed=0,
        eval_batch_size=4,
        tokenizer=tokenizer,
        reference=ReferencePolicy.for_policy(model),
        rewards=rewards,
        samples=SampleLog(tmp / "samples.jsonl", 0),
    )

    def prepare(model: torch.nn.Module) -> dict[str, Any]:
        (batch,) = trainer.prepare(model, [{"prompts": prompts}], 0)
        return with_random_advantages(batch, (len(prompts) * 4,))

    return Case(model, trainer.step, prepare=prepare, generates=True)


def ppo_case(tmp: Path) -> Case:
    from tunekit.models.policy import build_policy
    from tunekit.rl.ppo import PPOLossConfig, PPOTrainer
    from tunekit.rl.roles import CriticConfig, SharedRoles
    from tunekit.rl.rollout import SamplingConfig
    from tunekit.rl.samples import SampleLog

    tokenizer, prompts, rewards = prompts_and_rewards()
    model = build_policy(MODEL, reference_adapter=True)
    roles = SharedRoles(model, CriticConfig(), None)
    moved_off_zero(model)
    trainer = PPOTrainer(
        PPOLossConfig(entropy_coef=0.0),
        SamplingConfig(num_generations=1, max_new_tokens=8),
        seed=0,
        eval_batch_size=4,
        tokenizer=tokenizer,
        roles=roles,
        reward_sources=rewards,
        samples=SampleLog(tmp / "samples.jsonl", 0),
    )

    def prepare(model: torch.nn.Module) -> dict[str, Any]:
        (experience,) = trainer.prepare(model, [{"prompts": prompts}], 0)
        (minibatch,) = trainer.select([experience], 0)
        return with_random_advantages(minibatch, tuple(minibatch["old_logps"].shape))

    return Case(model, trainer.step, prepare=prepare, generates=True)


CASES: dict[str, Callable[[Path], Case]] = {
    "sft": lambda tmp: sft_case(DataConfig(), synthetic.sft_examples),
    "pretrain": lambda tmp: sft_case(PretrainConfig().data, synthetic.text_corpus),
    "reward": lambda tmp: reward_case(),
    "dpo": lambda tmp: dpo_case(),
    "grpo": grpo_case,
    "ppo": ppo_case,
}


def run_step(case: Case, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss, _ = case.step(model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def built(recipe: str, tmp: Path, fast: bool) -> Case:
    torch.manual_seed(0)  # both sides start from the same adapter initialisation
    case = CASES[recipe](tmp / ("fast" if fast else "plain"))
    paths = enable_fast_paths(case.model, FastPathConfig(enabled=fast), generates=case.generates)
    assert fast == ("lean-lora" in paths.on)
    return case


@pytest.mark.parametrize("recipe", list(CASES))
def test_the_step_is_the_same_with_the_fast_paths_off_and_on(recipe, tmp_path):
    fast, plain = built(recipe, tmp_path, fast=True), built(recipe, tmp_path, fast=False)
    for (name, a), b in zip(fast.model.state_dict().items(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    if plain.prepare is not None:
        with torch.no_grad():
            batch = plain.prepare(plain.model)
        fast.fast_batch, plain.plain_batch = copy.deepcopy(batch), batch
    fast_loss, fast_grads = run_step(fast, fast.model, fast.fast_batch)
    plain_loss, plain_grads = run_step(plain, plain.model, plain.plain_batch)
    assert fast_loss == pytest.approx(plain_loss, rel=1e-5)
    assert fast_grads.keys() == plain_grads.keys() and fast_grads
    # Summation order differs (merged LoRA weights, one row of real tokens, a trimmed last layer), so gradients
    # agree to fp32 rounding relative to each tensor's size, not element by element.
    for name, grad in plain_grads.items():
        assert (fast_grads[name] - grad).norm() <= 1e-4 * grad.norm(), name
