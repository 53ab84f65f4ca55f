"""Held-out evaluation of an RL policy: per-completion measures averaged over sampled and greedy rollouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tunekit.rl.rollout import PromptExample, Rollout, RolloutFn, SamplingConfig, rollouts_in_batches
from tunekit.train.rng import seeded_rng

# measure(rollout, sampled) -> {name: [N] values, one per completion}; sampled is false for the greedy pass.
Measure = Callable[[Rollout, bool], dict[str, torch.Tensor]]


def sampled_and_greedy_means(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[PromptExample],
    sampling: SamplingConfig,
    greedy: SamplingConfig,
    batch_size: int,
    seed: int,
    measure: Measure,
    generate: RolloutFn | None = None,
) -> dict[str, float]:
    """Each measure's mean over every completion of ``prompts``: ``{name: mean}`` for completions drawn with
    ``sampling``, then ``{"greedy/" + name: mean}`` for those decoded with ``greedy``, ``batch_size`` prompts at a
    time; ``generate`` makes the rollouts (default: :func:`~tunekit.rl.rollout.generate_rollout`).

    Sampling runs under its own generator state seeded with ``seed``, so an evaluation neither depends on nor
    changes the training run's random stream.
    """
    results: dict[str, float] = {}
    with seeded_rng(seed), torch.no_grad():
        for prefix, config in (("", sampling), ("greedy/", greedy)):
            values: dict[str, list[torch.Tensor]] = {}
            for rollout in rollouts_in_batches(model, tokenizer, prompts, config, batch_size, generate):
                for name, value in measure(rollout, not prefix).items():
                    values.setdefault(name, []).append(value)
            results.update({f"{prefix}{name}": torch.cat(v).mean().item() for name, v in values.items()})
    return results
