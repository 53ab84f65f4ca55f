"""Direct preference optimisation and its family (IPO, hinge, robust, SimPO, ORPO) on preference pairs.

    python -m tunekit.recipes.dpo                                    # tiny model, generated pairs, offline
    python -m tunekit.recipes.dpo loss.loss_type=ipo loss.beta=0.5
    python -m tunekit.recipes.dpo --config recipes/dpo/hh-rlhf-tiny.yaml
    python -m tunekit.recipes.dpo model.path=runs/sft-.../final      # continue an SFT run's adapter

Chosen and rejected go through the model in one forward pass. Under an adapter the reference policy is the same
weights with the adapter off (or a frozen copy of the SFT adapter being continued), so no second model is held.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal

import torch

from tunekit.data import synthetic
from tunekit.data.collate import collate_pairs
from tunekit.data.pairs import PairDataConfig, load_pair_data
from tunekit.errors import require
from tunekit.losses.preference import REFERENCE_FREE, PairLogps, PreferenceLossConfig, preference_loss
from tunekit.models.adapters import check_adapter_use, trained_summary
from tunekit.models.load import load_tokenizer
from tunekit.models.logprobs import sequence_logps
from tunekit.models.policy import build_policy
from tunekit.models.reference import ReferencePolicy
from tunekit.models.reference_logps import precompute_reference
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


def _dpo_train() -> TrainConfig:
    # Tuned for the embedded tiny model; real checkpoints want far smaller rates (see recipes/dpo/*.yaml).
    return TrainConfig(lr=2e-3, epochs=2, micro_batch_size=8, eval_every=50)


def _dpo_loss() -> PreferenceLossConfig:
    return PreferenceLossConfig(beta=0.2)


@dataclass
class DPOConfig(RecipeConfig):
    data: PairDataConfig = field(default_factory=PairDataConfig)
    loss: PreferenceLossConfig = field(default_factory=_dpo_loss)
    # Reference log-probs: computed each step ("on_the_fly", also what null means for types with a reference), or once
    # before training ("precompute"), saved in the run directory and reused on resume. Reference-free types (simpo,
    # orpo) take none: leave it null.
    reference: Literal["on_the_fly", "precompute"] | None = None
    train: TrainConfig = field(default_factory=_dpo_train)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.loss.loss_type not in REFERENCE_FREE or self.reference is None,
            "reference",
            f"is {self.reference}, but loss.loss_type={self.loss.loss_type} is reference-free; leave it unset (null)",
        )


def dpo_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    loss_config: PreferenceLossConfig,
    reference: ReferencePolicy | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Summed preference loss over the batch's pairs (rows [0, B) chosen, [B, 2B) rejected)."""
    sums, counts = sequence_logps(model, batch)
    chosen, rejected = sums.chunk(2)
    chosen_tokens, rejected_tokens = counts.chunk(2)
    ref_chosen = ref_rejected = None
    if "ref_logps" in batch:
        ref_chosen, ref_rejected = batch["ref_logps"].unbind(1)
    elif reference is not None:
        ref_sums, _ = reference.run(model, lambda m: sequence_logps(m, batch))
        ref_chosen, ref_rejected = ref_sums.chunk(2)
    logps = PairLogps(chosen, rejected, chosen_tokens, rejected_tokens, ref_chosen, ref_rejected)
    return step_result(preference_loss(logps, loss_config), batch)


def run(config: DPOConfig) -> RunResult:
    check_adapter_use(config.model, earlier="continue")
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    pairs, eval_pairs, stats = load_pair_data(config.data, tokenizer, config.seed, synthetic.preference_pairs)
    data_lines = [f"data ({name}): {stat.summary()}" for name, stat in stats.items()]
    for line in data_lines:
        say(line)
    collate = partial(collate_pairs, pad_id=tokenizer.pad_token_id, pad_to_multiple_of=config.train.pad_to_multiple_of)

    model = build_policy(config.model, reference_adapter=config.loss.loss_type not in REFERENCE_FREE)
    reference = None if config.loss.loss_type in REFERENCE_FREE else ReferencePolicy.for_policy(model)
    use_fast_paths(model, config, reference=reference)
    say(f"policy: {config.model.path}, {trained_summary(model)}")
    if reference is not None:
        say(f"reference policy: {reference.kind.replace('_', ' ')}")
    on_start = None
    if config.reference == "precompute" and reference is not None:
        # Once the runner has placed the model on its device, under the run's precision: the reference log-probs
        # are then computed as the policy's are at each step.
        settings = json.dumps([asdict(config.model), config.train.mixed_precision], sort_keys=True, default=str)
        on_start = partial(
            precompute_reference,
            output_dir,
            reference=reference,
            splits={"train": pairs, "eval": eval_pairs},
            collate=collate,
            batch_size=config.train.micro_batch_size,
            settings=settings,
            say=say,
        )
    spec = run_spec(
        config,
        output_dir,
        resume_from,
        card=RecipeCard("dpo", __doc__ or "dpo", data_lines),
        items=pairs,
        collate=collate,
        eval_items=eval_pairs,
        save_final=final_saver(tokenizer),
        on_start=on_start,
    )
    result = train(spec, model, partial(dpo_step, loss_config=config.loss, reference=reference))
    last = result.history[-1] if result.history else {}
    if "eval/rewards/accuracy" in last:
        say(
            f"held-out implicit-reward accuracy {last['eval/rewards/accuracy']:.3f}, "
            f"margin {last['eval/rewards/margin']:.3f}"
        )
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(DPOConfig, argv, "dpo", __doc__))


if __name__ == "__main__":
    run_command(main)
