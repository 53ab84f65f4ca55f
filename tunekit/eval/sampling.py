"""Generation for evaluation: greedy, sampled (temperature, top-k, top-p) and best-of-n.

Every mode goes through :func:`tunekit.rl.rollout.generate_rollout`, the same KV-cached, batched generation
that GRPO trains with, so an evaluation samples exactly as training does. Best-of-n draws n completions per
prompt and keeps the one that the ``select_by`` reward sources (reward functions or ``model:<dir>`` reward
models, combined as in :func:`tunekit.rl.reward_calls.compute_rewards`) score highest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tunekit.data.prompts import PromptExample
from tunekit.errors import require
from tunekit.rl.reward_calls import compute_rewards
from tunekit.rl.rewards import RewardFn, RewardSource
from tunekit.rl.rollout import SamplingConfig, check_sampling, generate_rollout

Mode = Literal["greedy", "sample", "best_of_n"]


@dataclass
class GenerationConfig:
    # greedy: the most likely token at every step; sample: one completion per prompt drawn with temperature,
    # top_k and top_p; best_of_n: n such completions per prompt, the one select_by scores highest kept.
    mode: Mode = "greedy"
    # Longest completion generated, in tokens; generation also stops at EOS or a stop string.
    max_new_tokens: int = 16
    # Sampling only (sample, best_of_n). temperature 0 decodes greedily.
    temperature: float = 1.0
    # 0 keeps every token; otherwise only the k most likely are sampled.
    top_k: int = 0
    # Sample only from the smallest set of tokens whose probability reaches top_p (1.0: all).
    top_p: float = 1.0
    # best_of_n: completions drawn per prompt.
    n: int = 4
    # best_of_n: the reward sources that pick the best completion (their weighted sum), e.g. a reward model
    # [{name: "model:runs/reward-tiny/final"}] or a reward function [{name: math_correct}].
    select_by: list[RewardSource] = field(default_factory=list)
    # Generation of a completion also stops at any of these strings (besides EOS).
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_sampling(self)
        require(self.n >= 1, "n", f"must be at least 1, got {self.n}")


def sampling_config(config: GenerationConfig) -> SamplingConfig:
    """The rollout sampling settings of a generation mode."""
    greedy = config.mode == "greedy"
    return SamplingConfig(
        num_generations=config.n if config.mode == "best_of_n" else 1,
        max_new_tokens=config.max_new_tokens,
        temperature=0.0 if greedy else config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        stop_strings=list(config.stop_strings),
    )


@dataclass
class Generations:
    """Completions of P prompts: n candidates each (n = 1 unless best-of-n) and the index of the one kept."""

    candidates: list[list[str]]  # [P][n]
    truncated: list[list[bool]]  # [P][n] hit max_new_tokens without EOS or a stop string
    chosen: list[int]  # [P] index into candidates
    scores: list[list[float]] | None = None  # [P][n] the select_by total of each candidate (best-of-n only)

    @property
    def completions(self) -> list[str]:
        """[P] the kept completion of each prompt."""
        return [c[i] for c, i in zip(self.candidates, self.chosen, strict=True)]

    @classmethod
    def given(cls, completions: list[str]) -> Generations:
        """Completions that were not generated (a reference, a test's known answers), one per prompt."""
        return cls([[c] for c in completions], [[False] for _ in completions], [0] * len(completions))


def best_of(scores: torch.Tensor) -> torch.Tensor:
    """[P, n] scores -> [P] index of each row's highest score (the first of equal highest ones)."""
    return scores.argmax(dim=-1)  # torch.argmax returns the first maximal index


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[PromptExample],
    config: GenerationConfig,
    batch_size: int = 16,
    select_by: Sequence[tuple[RewardSource, RewardFn]] = (),
) -> Generations:
    """Completions for ``prompts`` in ``config.mode``, ``batch_size`` prompts per generate call (best_of_n makes n
    rows of each); ``select_by`` (loaded reward sources) picks the best of n and is used by best_of_n only."""
    sampling = sampling_config(config)
    group = sampling.num_generations
    candidates: list[list[str]] = []
    truncated: list[list[bool]] = []
    scores: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        rollout = generate_rollout(model, tokenizer, batch, sampling)
        # Rows [p * group, (p + 1) * group) are the completions of prompt p.
        for p in range(len(batch)):
            rows = slice(p * group, (p + 1) * group)
            candidates.append(rollout.completions[rows])
            truncated.append(rollout.truncated[rows].tolist())
        if config.mode == "best_of_n":
            total, _ = compute_rewards(list(select_by), rollout.prompts, rollout.completions, rollout.columns)
            scores.extend(total.view(len(batch), group).tolist())
    if config.mode != "best_of_n":
        return Generations(candidates, truncated, [0] * len(candidates))
    chosen = best_of(torch.tensor(scores, dtype=torch.float32)).tolist()
    return Generations(candidates, truncated, chosen, scores)
