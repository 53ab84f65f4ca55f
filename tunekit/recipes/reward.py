"""Reward model training: a one-output score head on the base, trained with the Bradley-Terry loss on pairs.

    python -m tunekit.recipes.reward                                   # tiny model, generated pairs, offline
    python -m tunekit.recipes.reward --config recipes/reward/hh-rlhf-tiny.yaml
    python -m tunekit.recipes.reward model.path=runs/sft-.../final     # start from an SFT run

final/ holds the adapter with the trained score head; score with ``tunekit.models.reward.RewardScorer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from tunekit.data import synthetic
from tunekit.data.collate import collate_pairs
from tunekit.data.mixing import by_source_metrics
from tunekit.data.pairs import PairDataConfig, PairExample, load_pair_data
from tunekit.losses.reward import bradley_terry_loss
from tunekit.models.adapters import apply_adapter, check_adapter_use, trained_summary
from tunekit.models.load import load_model, load_tokenizer
from tunekit.models.reward import last_token_scores
from tunekit.recipes.common import (
    RecipeConfig,
    final_saver,
    parse_args,
    run_command,
    run_spec,
    say,
    start_run,
    use_fast_paths,
)
from tunekit.train.card import RecipeCard
from tunekit.train.runner import RunResult, train
from tunekit.train.spec import TrainConfig, step_result


@dataclass
class RewardLossConfig:
    # Weight of the reward-centering term (chosen + rejected)^2, which keeps scores near zero.
    center_coef: float = 0.0


def _reward_train() -> TrainConfig:
    # Tuned for the embedded tiny model; see recipes/reward/*.yaml for real checkpoints.
    return TrainConfig(lr=2e-3, epochs=2, micro_batch_size=8, eval_every=100)


@dataclass
class RewardConfig(RecipeConfig):
    data: PairDataConfig = field(default_factory=PairDataConfig)
    loss: RewardLossConfig = field(default_factory=RewardLossConfig)
    train: TrainConfig = field(default_factory=_reward_train)


def reward_step(model: torch.nn.Module, batch: dict[str, Any], center_coef: float) -> tuple[torch.Tensor, dict]:
    """Summed Bradley-Terry loss over the batch's pairs (chosen rows first, then rejected)."""
    scores = last_token_scores(model, batch["input_ids"], batch["attention_mask"])
    chosen, rejected = scores.chunk(2)
    return step_result(bradley_terry_loss(chosen, rejected, batch["margin"], center_coef), batch)


def pair_scores(model: torch.nn.Module, pairs: list[PairExample], collate: Any, batch_size: int) -> torch.Tensor:
    """[N, 2] (chosen, rejected) scores of ``pairs``, batched."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(pairs), batch_size):
        batch = collate(pairs[start : start + batch_size])
        scores = last_token_scores(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        out.append(torch.stack(scores.chunk(2), dim=1))
    return torch.cat(out).cpu()


def pairwise_metrics(scores: torch.Tensor, margins: torch.Tensor, center_coef: float) -> dict[str, float]:
    """Held-out loss, pairwise accuracy, mean margin and the mean/std of all rewards, from [N, 2] scores."""
    return {
        "loss": bradley_terry_loss(scores[:, 0], scores[:, 1], margins, center_coef).mean().item(),
        "accuracy": (scores[:, 0] > scores[:, 1]).float().mean().item(),
        "margin": (scores[:, 0] - scores[:, 1]).mean().item(),
        "reward_mean": scores.mean().item(),
        "reward_std": scores.std().item() if scores.numel() > 1 else 0.0,
    }


def run(config: RewardConfig) -> RunResult:
    check_adapter_use(config.model, head="score")
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    pairs, eval_pairs, stats = load_pair_data(config.data, tokenizer, config.seed, synthetic.preference_pairs)
    data_lines = [f"data ({name}): {stat.summary()}" for name, stat in stats.items()]
    for line in data_lines:
        say(line)
    collate = partial(collate_pairs, pad_id=tokenizer.pad_token_id, pad_to_multiple_of=config.train.pad_to_multiple_of)

    model = load_model(config.model, head="score")
    model = apply_adapter(
        model, config.model.adapter, head="score", gradient_checkpointing=config.model.gradient_checkpointing
    )
    use_fast_paths(model, config)
    say(f"model: {config.model.path} + score head, {trained_summary(model)}")
    center = config.loss.center_coef

    def evaluate(model: torch.nn.Module, pairs: list[PairExample]) -> dict[str, float]:
        scores = pair_scores(model, pairs, collate, config.train.micro_batch_size)
        return pairwise_metrics(scores, torch.tensor([p.margin for p in pairs]), center)

    spec = run_spec(
        config,
        output_dir,
        resume_from,
        card=RecipeCard("reward", __doc__ or "reward", data_lines),
        items=pairs,
        collate=collate,
        # A mixture's pairs are also scored per source: eval/<source>/accuracy beside eval/accuracy.
        evaluate=by_source_metrics(evaluate, eval_pairs) if eval_pairs else None,
        save_final=final_saver(tokenizer),
    )
    result = train(spec, model, partial(reward_step, center_coef=center))
    last = result.history[-1] if result.history else {}
    if "eval/accuracy" in last:
        say(f"held-out pairwise accuracy {last['eval/accuracy']:.3f}, mean margin {last['eval/margin']:.3f}")
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(RewardConfig, argv, "reward", __doc__))


if __name__ == "__main__":
    run_command(main)
