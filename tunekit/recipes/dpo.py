"""Direct preference optimisation and its family (IPO, hinge, robust, SimPO, ORPO) on preference pairs.

    python -m tunekit.recipes.dpo                                    # tiny model, generated pairs, offline
    python -m tunekit.recipes.dpo loss.loss_type=ipo loss.beta=0.5
    python -m tunekit.recipes.dpo --config recipes/dpo/hh-rlhf-tiny.yaml
    python -m tunekit.recipes.dpo model.path=runs/sft-.../final      # continue an SFT run's adapter
    python -m tunekit.recipes.dpo --config recipes/dpo/online-tiny.yaml   # online DPO: fresh pairs, judged each step

Chosen and rejected go through the model in one forward pass. Under an adapter the reference policy is the same
weights with the adapter off (or a frozen copy of the SFT adapter being continued), so no second model is held.
With online.enabled=true, data holds prompts: each step samples completions from the current policy, the judge
ranks them, and the same step and loss train on each prompt's best and worst (tunekit/rl/online_dpo.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from tunekit.data import synthetic
from tunekit.data.collate import collate_pairs
from tunekit.data.mixing import source_losses
from tunekit.data.pairs import PairDataConfig, PairExample, load_pair_data
from tunekit.data.prompts import collate_prompts
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
    check_prepared_path,
    final_saver,
    parse_args,
    run_command,
    run_spec,
    say,
    say_held_out_outcome,
    start_run,
    use_fast_paths,
)
from tunekit.rl.online_dpo import OnlineDPO, OnlineDPOConfig, check_judge_config, check_online_keys, load_online_inputs
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
    online: OnlineDPOConfig = field(default_factory=OnlineDPOConfig)
    train: TrainConfig = field(default_factory=_dpo_train)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.loss.loss_type not in REFERENCE_FREE or self.reference is None,
            "reference",
            f"is {self.reference}, but loss.loss_type={self.loss.loss_type} is reference-free; leave it unset (null)",
        )
        check_online_keys(self.online, self.data, self.reference)


def dpo_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    loss_config: PreferenceLossConfig,
    reference: ReferencePolicy | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Summed preference loss over the batch's pairs (rows [0, B) chosen, [B, 2B) rejected; ``keep`` [B], where
    given, the pairs that count)."""
    sums, counts = sequence_logps(model, batch)
    chosen, rejected = sums.chunk(2)
    chosen_tokens, rejected_tokens = counts.chunk(2)
    ref_chosen = ref_rejected = None
    if "ref_logps" in batch:
        ref_chosen, ref_rejected = batch["ref_logps"].unbind(1)
    elif reference is not None:
        ref_sums, _ = reference.run(model, lambda m: sequence_logps(m, batch))
        ref_chosen, ref_rejected = ref_sums.chunk(2)
    logps = PairLogps(chosen, rejected, chosen_tokens, rejected_tokens, ref_chosen, ref_rejected, batch.get("keep"))
    loss_sum, metrics = step_result(preference_loss(logps, loss_config), batch)
    # Online DPO's batches carry their judge metrics, measured when the pairs were sampled and judged.
    return loss_sum, {**metrics, **batch.get("metrics", {})}


HOW_TO_PREPARE = (
    "recipes/dpo/online-tiny.yaml starts from the SFT warm start that `python -m tunekit.recipes.sft --config "
    "recipes/sft/tiny-warmstart.yaml` writes; run that first, or set model.path"
)


def run(config: DPOConfig) -> RunResult:
    online = config.online.enabled
    if online:
        check_prepared_path("model.path", config.model.path, HOW_TO_PREPARE)
        check_judge_config(config.online.judge)
    check_adapter_use(config.model, left_padding=online, earlier="continue")  # rollouts left-pad their prompts
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    if online:
        inputs = load_online_inputs(config.data, config.online, config.seed, tokenizer, output_dir, resume_from, say)
        data_lines = [inputs.summary]
    else:
        pairs, eval_pairs, stats = load_pair_data(config.data, tokenizer, config.seed, synthetic.preference_pairs)
        data_lines = [f"data ({name}): {stat.summary()}" for name, stat in stats.items()]
        for line in data_lines:
            say(line)

    model = build_policy(config.model, reference_adapter=config.loss.loss_type not in REFERENCE_FREE)
    reference = None if config.loss.loss_type in REFERENCE_FREE else ReferencePolicy.for_policy(model)
    use_fast_paths(model, config, generates=online, reference=reference)
    say(f"policy: {config.model.path}, {trained_summary(model)}")
    if reference is not None:
        say(f"reference policy: {reference.kind.replace('_', ' ')}")
    if online:
        # The experience hooks sample and judge each step's pairs; the step function below is offline DPO's.
        hooks = OnlineDPO(config.online, inputs, tokenizer, config.seed, config.train.micro_batch_size)
        fields: dict[str, Any] = {
            "items": inputs.prompts,
            "collate": collate_prompts,
            "evaluate": partial(hooks.evaluate, prompts=inputs.held_out) if inputs.held_out else None,
            "prepare": hooks.prepare,
            "select": hooks.select,
            "state": hooks,
        }
    else:
        fields = _pair_fields(config, tokenizer, pairs, eval_pairs, reference, output_dir)
    card = RecipeCard("dpo", __doc__ or "dpo", data_lines)
    spec = run_spec(config, output_dir, resume_from, card=card, save_final=final_saver(tokenizer), **fields)
    result = train(spec, model, partial(dpo_step, loss_config=config.loss, reference=reference))
    last = result.history[-1] if result.history else {}
    if "eval/rewards/accuracy" in last:
        say(
            f"held-out implicit-reward accuracy {last['eval/rewards/accuracy']:.3f}, "
            f"margin {last['eval/rewards/margin']:.3f}"
        )
    if online:
        say_held_out_outcome(result.history, ["judge/score", *([inputs.task.key] if inputs.task else [])])
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def _pair_fields(
    config: DPOConfig,
    tokenizer: Any,
    pairs: list[PairExample],
    eval_pairs: list[PairExample],
    reference: ReferencePolicy | None,
    output_dir: Path,
) -> dict[str, Any]:
    """The RunSpec fields of offline DPO: the pairs, their collate, and a reference precomputed at the start."""
    collate = partial(collate_pairs, pad_id=tokenizer.pad_token_id, pad_to_multiple_of=config.train.pad_to_multiple_of)
    fields: dict[str, Any] = {"items": pairs, "collate": collate, "eval_items": eval_pairs}
    # A mixture's held-out pairs per source too: eval/<source>/loss, eval/<source>/rewards/accuracy...
    step = partial(dpo_step, loss_config=config.loss, reference=reference)
    fields["evaluate"] = source_losses(eval_pairs, collate, step, config.train.micro_batch_size)
    if config.reference == "precompute" and reference is not None:
        # Once the runner has placed the model on its device, under the run's precision: the reference log-probs
        # are then computed as the policy's are at each step.
        settings = json.dumps([asdict(config.model), config.train.mixed_precision], sort_keys=True, default=str)
        fields["on_start"] = partial(
            precompute_reference,
            output_dir,
            reference=reference,
            # A mixture's pairs: every source's, since each epoch draws its own (data/mixture.py).
            splits={"train": getattr(pairs, "pool", pairs), "eval": eval_pairs},
            collate=collate,
            batch_size=config.train.micro_batch_size,
            settings=settings,
            say=say,
        )
    return fields


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(DPOConfig, argv, "dpo", __doc__))


if __name__ == "__main__":
    run_command(main)
