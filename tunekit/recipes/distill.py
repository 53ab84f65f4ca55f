"""Knowledge distillation: a student learns a frozen teacher's next-token distributions, offline or on-policy (GKD).

    python -m tunekit.recipes.sft --config recipes/sft/tiny-warmstart.yaml     # the teacher the default uses
    python -m tunekit.recipes.distill                                         # tiny-llama-small learns from it
    python -m tunekit.recipes.distill on_policy.fraction=1 loss.divergence=reverse_kl   # on-policy (GKD)
    python -m tunekit.recipes.distill loss.sft_weight=1                       # SFT alone, measured the same way
    python -m tunekit.recipes.generate --config recipes/generate/tiny.yaml           # sequence-level: teacher data

Each step runs the teacher (frozen, no gradients, not checkpointed) and the student on the same tokens and takes
a divergence between their distributions at every completion token (forward KL, reverse KL or GKD's generalised
JSD; tunekit/losses/distill.py), optionally mixed with the plain SFT loss. With on_policy.fraction > 0, that share
of the steps trains on completions the student samples itself. Held-out evaluation logs the student's KL to the
teacher (eval/kl) and its greedy task accuracy. See docs/distill.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from tunekit.data import synthetic
from tunekit.data.collate import collate_examples, collate_packed, collate_padding_free, model_inputs
from tunekit.data.packing import pack_examples
from tunekit.data.sft import DataConfig, load_sft_data
from tunekit.errors import require
from tunekit.fast import fast_paths_of
from tunekit.losses.distill import DistillLossConfig, distillation_loss
from tunekit.losses.sft import IGNORE_INDEX
from tunekit.models.adapters import AdapterConfig, apply_adapter, check_adapter_use, trained_summary
from tunekit.models.load import ModelConfig, load_model, load_tokenizer
from tunekit.models.logprobs import causal_lm_logits, label_logits
from tunekit.models.teacher import (
    TeacherConfig,
    check_shared_vocabulary,
    load_teacher,
    place_teacher,
    shared_logit_width,
)
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
from tunekit.rl.on_policy_distill import DistillHooks, OnPolicyConfig, distill_task_metric, held_out_prompts
from tunekit.train.card import RecipeCard
from tunekit.train.runner import RunResult, train
from tunekit.train.spec import TrainConfig, step_result

HOW_TO_PREPARE = (
    "the default distillation config's teacher is the SFT warm start that `python -m tunekit.recipes.sft --config "
    "recipes/sft/tiny-warmstart.yaml` writes; run that first, or set teacher.path"
)


def _student() -> ModelConfig:
    # A student half as wide and half as deep as the teacher, with its tokenizer, trained in full from random weights.
    return ModelConfig(path="tiny-llama-small", adapter=AdapterConfig(method="full"))


def _distill_data() -> DataConfig:
    return DataConfig(synthetic_size=4000)


def _distill_train() -> TrainConfig:
    # Sized for the embedded student: two epochs (500 steps) take about 40 s on two CPU cores, and bring it to its
    # teacher (docs/results.md); after one it is still well short of it.
    return TrainConfig(lr=3e-3, epochs=2, micro_batch_size=16, eval_every=50, warmup_ratio=0.05)


@dataclass
class DistillConfig(RecipeConfig):
    # The student: any model and adapter method the sft recipe takes (LoRA, QLoRA, full...), sharing the teacher's
    # vocabulary.
    model: ModelConfig = field(default_factory=_student)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    # The data whose prompts (and, offline, completions) the teacher scores: any format the sft recipe reads.
    data: DataConfig = field(default_factory=_distill_data)
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    train: TrainConfig = field(default_factory=_distill_train)
    # The checker of the held-out greedy answers, logged as eval/greedy/task/<name>: auto (math_correct when every
    # held-out completion has a "#### answer"), a reward-function name, or null (none).
    task_metric: str | None = "auto"
    # Held-out examples answered greedily at each evaluation, for the task metric.
    max_eval_prompts: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_eval_prompts >= 0, "max_eval_prompts", f"must be 0 or more, got {self.max_eval_prompts}")
        require(
            not (self.data.packing and self.on_policy.fraction > 0),
            "data.packing",
            "cannot be combined with on_policy.fraction > 0: sampled completions replace each example's own",
        )


def distill_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    teacher: torch.nn.Module,
    loss_config: DistillLossConfig,
    width: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Summed distillation loss over the batch's completion tokens: the student's and the teacher's logits at the
    positions that predict a label ([K, width] each), compared by ``loss_config``'s divergence."""
    if "seq_lens" in batch:  # padding-free: both models compute logits only where there is a label
        student_logits, targets, _ = label_logits(model, batch)
        with torch.no_grad():
            teacher_logits, _, _ = label_logits(teacher, batch)
    else:
        keep = batch["labels"][:, 1:] != IGNORE_INDEX
        targets = batch["labels"][:, 1:][keep]
        student_logits = causal_lm_logits(model, model_inputs(batch, model))[:, :-1][keep]
        with torch.no_grad():
            teacher_logits = causal_lm_logits(teacher, model_inputs(batch, teacher))[:, :-1][keep]
    output = distillation_loss(student_logits[:, :width], teacher_logits[:, :width], targets, loss_config)
    loss_sum, metrics = step_result(output, batch)
    return loss_sum, {**metrics, **batch.get("metrics", {})}


def run(config: DistillConfig) -> RunResult:
    check_prepared_path("teacher.path", config.teacher.path, HOW_TO_PREPARE)
    check_adapter_use(config.model, packing=config.data.packing)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    teacher_tokenizer = load_tokenizer(config.teacher.path, config.teacher.trust_remote_code, config.teacher.revision)
    check_shared_vocabulary(teacher_tokenizer, tokenizer, config.teacher.path, config.model.path)
    output_dir, resume_from = start_run(config)
    examples, eval_examples, stats = load_sft_data(config.data, tokenizer, config.seed, synthetic.sft_examples)
    data_lines = [f"data ({name}): {stat.summary()}" for name, stat in stats.items()]
    held_out = held_out_prompts(eval_examples, tokenizer, config.max_eval_prompts)
    task = distill_task_metric(config.task_metric, held_out)
    pad, multiple = tokenizer.pad_token_id, config.train.pad_to_multiple_of
    items: list[Any] = examples
    eval_items: list[Any] = eval_examples
    collate: Any = partial(collate_examples, pad_id=pad, pad_to_multiple_of=multiple)
    if config.data.packing:
        items, eval_items = (
            pack_examples(examples, config.data.max_length),
            pack_examples(eval_examples, config.data.max_length),
        )
        collate = partial(collate_packed, pad_id=pad, pad_to_multiple_of=multiple)
        data_lines.append(
            f"packing: {len(examples)} examples into {len(items)} rows of {config.data.max_length} tokens"
        )
    for line in data_lines:
        say(line)

    teacher = load_teacher(config.teacher, config.model.fast_paths)
    student = apply_adapter(
        load_model(config.model), config.model.adapter, gradient_checkpointing=config.model.gradient_checkpointing
    )
    width = shared_logit_width(teacher, student, len(tokenizer))
    say(f"student: {config.model.path}, {trained_summary(student)}")
    say(f"teacher: {config.teacher.path}, {sum(p.numel() for p in teacher.parameters()):,} parameters, frozen")
    paths = use_fast_paths(student, config, generates=config.on_policy.fraction > 0)
    if paths.uses("padding-free") and fast_paths_of(teacher).uses("padding-free"):
        # Both models then compute logits at the label positions only; the loss and its units are the same.
        collate = collate_padding_free
    hooks = DistillHooks(
        config.on_policy, tokenizer, collate, config.seed, held_out, task, config.train.micro_batch_size
    )
    card = RecipeCard("distill", __doc__ or "distill", data_lines)
    spec = run_spec(
        config,
        output_dir,
        resume_from,
        card=card,
        items=items,
        collate=collate,
        eval_items=eval_items,
        evaluate=hooks.evaluate if task is not None else None,
        prepare=hooks.prepare,
        on_start=partial(place_teacher, teacher),
        save_final=final_saver(tokenizer),
    )
    step = partial(distill_step, teacher=teacher, loss_config=config.loss, width=width)
    result = train(spec, student, step)
    kl = [r["eval/kl"] for r in result.history if "eval/kl" in r]
    if kl:
        say(f"held-out KL(teacher || student) per token: {kl[0]:.3f} at the first evaluation, {kl[-1]:.3f} at the end")
    if task is not None:
        say_held_out_outcome(result.history, [task.key])
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(DistillConfig, argv, "distill", __doc__))


if __name__ == "__main__":
    run_command(main)
