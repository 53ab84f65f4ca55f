"""KTO: alignment from unpaired binary feedback, each completion marked desirable (true) or undesirable (false).

    python -m tunekit.recipes.kto                                   # tiny model, generated pairs read unpaired
    python -m tunekit.recipes.kto --config recipes/kto/tiny.yaml
    python -m tunekit.recipes.kto data.path=feedback.jsonl model.path=runs/sft-.../final

Rows hold ``prompt`` + ``completion`` + ``label`` (or ``messages`` + ``label``); preference pairs are read as two
examples, chosen -> true and rejected -> false. Each step runs the batch's examples through the policy and the
reference, and the same prompts with the batch's completions rotated by one (no gradient) to estimate KTO's
reference point, the policy's KL from the reference (tunekit/losses/kto.py). Model, adapter and reference work as
in the dpo recipe: under an adapter the reference is the same weights with the adapter off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from tunekit.data import synthetic
from tunekit.data.unpaired import UnpairedDataConfig, collate_unpaired, load_unpaired_data
from tunekit.errors import require
from tunekit.losses.kto import KTOLossConfig, kto_loss
from tunekit.models.adapters import check_adapter_use, trained_summary
from tunekit.models.load import load_tokenizer
from tunekit.models.logprobs import sequence_logps
from tunekit.models.policy import build_policy
from tunekit.models.reference import ReferencePolicy
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
from tunekit.train.engines import all_reduce_sum
from tunekit.train.runner import RunResult, train
from tunekit.train.spec import TrainConfig, step_result


def _kto_train() -> TrainConfig:
    # The dpo default's rate and batch on the same generated pairs, read as 4,000 unpaired examples: one epoch is
    # 500 steps, as the dpo default's two epochs of 2,000 pairs are.
    return TrainConfig(lr=2e-3, epochs=1, micro_batch_size=8, eval_every=100)


def _kto_loss() -> KTOLossConfig:
    return KTOLossConfig(beta=0.2)


@dataclass
class KTOConfig(RecipeConfig):
    data: UnpairedDataConfig = field(default_factory=UnpairedDataConfig)
    loss: KTOLossConfig = field(default_factory=_kto_loss)
    train: TrainConfig = field(default_factory=_kto_train)

    def __post_init__(self) -> None:
        super().__post_init__()
        # The reference point is estimated from the other examples of a micro-batch: with one, it would be the
        # example's own reward, and the loss would push it against itself.
        require(
            self.train.micro_batch_size >= 2,
            "train.micro_batch_size",
            f"must be at least 2 for KTO, got {self.train.micro_batch_size}: the KL reference point is estimated "
            "from the other examples of a micro-batch",
        )


def _rows(batch: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The model inputs of ``rows`` of a collated batch."""
    keys = ("input_ids", "attention_mask", "position_ids", "labels")
    return {k: batch[k][rows] for k in keys if k in batch}


def kto_step(
    model: torch.nn.Module, batch: dict[str, Any], loss_config: KTOLossConfig, reference: ReferencePolicy
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Summed KTO loss over the batch's B examples (rows [0, B) matched, [B, 2B) mismatched; ``label`` [B])."""
    n = batch["label"].shape[0]
    matched, mismatched = _rows(batch, slice(0, n)), _rows(batch, slice(n, 2 * n))
    logps, _ = sequence_logps(model, matched)
    with torch.no_grad():
        # The reference point carries no gradient, so the mismatched rows need no backward (as in TRL).
        kl_logps, _ = sequence_logps(model, mismatched)
    ref_logps, _ = reference.run(model, lambda m: sequence_logps(m, matched))
    ref_kl_logps, _ = reference.run(model, lambda m: sequence_logps(m, mismatched))
    output = kto_loss(logps, ref_logps, batch["label"], kl_logps, ref_kl_logps, loss_config, sum_across=all_reduce_sum)
    return step_result(output, batch)


def run(config: KTOConfig) -> RunResult:
    check_adapter_use(config.model, left_padding=False, earlier="continue")
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    examples, eval_examples, stats = load_unpaired_data(config.data, tokenizer, config.seed, synthetic.preference_pairs)
    data_lines = [f"data ({name}): {stat.summary()}" for name, stat in stats.items()]
    for line in data_lines:
        say(line)
    model = build_policy(config.model, reference_adapter=True)
    reference = ReferencePolicy.for_policy(model)
    use_fast_paths(model, config, reference=reference)
    say(f"policy: {config.model.path}, {trained_summary(model)}; reference policy: {reference.kind.replace('_', ' ')}")
    collate = partial(
        collate_unpaired, pad_id=tokenizer.pad_token_id, pad_to_multiple_of=config.train.pad_to_multiple_of
    )
    spec = run_spec(
        config,
        output_dir,
        resume_from,
        card=RecipeCard("kto", __doc__ or "kto", data_lines),
        items=examples,
        collate=collate,
        eval_items=eval_examples,
        save_final=final_saver(tokenizer),
    )
    result = train(spec, model, partial(kto_step, loss_config=config.loss, reference=reference))
    evals = [r for r in result.history if "eval/rewards/pairwise_accuracy" in r]
    if evals:
        first, last = evals[0], evals[-1]
        say(
            f"held-out implicit reward, first evaluation -> end: pairwise accuracy "
            f"{first['eval/rewards/pairwise_accuracy']:.3f} -> {last['eval/rewards/pairwise_accuracy']:.3f}, "
            f"margin {first['eval/rewards/margin']:.3f} -> {last['eval/rewards/margin']:.3f}, accuracy against the "
            f"reference point {first['eval/rewards/accuracy']:.3f} -> {last['eval/rewards/accuracy']:.3f}"
        )
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(KTOConfig, argv, "kto", __doc__))


if __name__ == "__main__":
    run_command(main)
