"""What a recipe hands the runner: the training settings (TrainConfig), the run (RunSpec) and the step function.

Kept apart from the loop itself so that the runner's helpers (optimizer, evaluation) can name these types without
importing the runner.

A step function is ``step(model, batch) -> (loss_sum, metrics)``: ``loss_sum`` summed over the batch's
``batch["num_items"]`` units, ``metrics`` per-batch means (see :mod:`tunekit.losses` for the units and
:func:`step_result` for turning a loss's output into this pair).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from tunekit.errors import require
from tunekit.losses import LossOutput
from tunekit.train.trackers import resolve_report_to

StepFn = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]


def step_result(output: LossOutput, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """A step function's ``(loss_sum, metrics)`` from its loss's output on ``batch``.

    The runner scaled the step's backward by the units the batches declared (``batch["num_items"]``) before the
    forward; a loss that covered a different number would silently reweight the step, so the two must agree.
    """
    if float(output.num_units) != float(batch["num_items"]):
        raise RuntimeError(
            f"the loss covers {float(output.num_units):g} units but the batch declared num_items="
            f"{float(batch['num_items']):g}; the collate function (or prepare) and the loss count different units"
        )
    return output.loss_sum, output.metrics


@dataclass
class TrainConfig:
    # Passes over the training items (examples, pairs or prompts), reshuffled each epoch; items that do not fill a whole
    # optimizer step at the end of an epoch sit that epoch out. max_steps can stop earlier.
    epochs: int = 2
    # Items per forward/backward pass on each process: examples or packed rows (sft, pretrain), pairs (reward, dpo) or
    # prompts (grpo, ppo; each sampled sampling.num_generations times). Held-out evaluation batches are this size too.
    micro_batch_size: int = 8
    # Micro-batches accumulated into one optimizer step: a step sees micro_batch_size x processes x grad_accum_steps
    # items, and its loss is the mean over all of them.
    grad_accum_steps: int = 1
    # Peak learning rate, reached at the end of warmup; the scheduler shapes it from there.
    lr: float = 1e-3
    # Weight decay on every trainable parameter (0: none); decoupled for the AdamW variants, L2 for sgd.
    weight_decay: float = 0.0
    # sgd (plain, no momentum) updates linearly in the gradient, which makes it the optimizer for exact
    # invariance checks: AdamW's first steps divide by |g| and turn rounding in near-zero gradients into
    # differences of order lr.
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"] = "adamw"
    # Learning rate after warmup: cosine or linear decay to 0 at the run's last step (max_steps when it caps the run),
    # or constant.
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    # Fraction of the run's optimizer steps over which the learning rate rises linearly from 0 to lr (0: no warmup).
    warmup_ratio: float = 0.03
    # Clip the gradient's global L2 norm to this before each optimizer step (0 or less: no clipping); grad_norm is
    # logged either way, before clipping.
    max_grad_norm: float = 1.0
    # Autocast compute precision; the stored weights keep model.dtype.
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # torch.compile each transformer block for the training forward and backward, and the rollouts' decode step
    # (see tunekit/fast/compiled.py): faster steps once the first few have paid for compilation (tens of
    # seconds). Not with FSDP or ZeRO-3.
    compile: bool = False
    # Write a metrics.jsonl line every this many optimizer steps; evaluation steps, the last step, loss spikes and
    # non-finite steps are logged whatever it says.
    log_every: int = 1
    # Evaluate on the held-out data (and the recipe's own evaluation, e.g. reward of samples) every this many optimizer
    # steps, with a step-0 baseline first; 0: only after the last step.
    eval_every: int = 0
    # Write a resumable checkpoint every this many optimizer steps; 0: only at the end (SIGTERM or SIGINT also saves one
    # before the run exits).
    save_every: int = 0
    # Complete checkpoints kept on disk (0: all).
    keep_checkpoints: int = 2
    # Stop after this many optimizer steps in a row with a non-finite loss or gradient (each is skipped).
    max_bad_steps: int = 5
    # A step whose loss exceeds this many times the median of recent steps is logged with its example ids
    # (0: off). Spikes usually point at bad rows.
    spike_factor: float = 5.0
    # Show a progress bar on the terminal (main process only); false keeps log files free of it.
    progress: bool = True
    # Pad batch widths to a multiple of this (8 suits tensor cores).
    pad_to_multiple_of: int = 1
    # Experiment trackers, through accelerate's: any of tensorboard, wandb, mlflow, trackio, comet_ml, aim, clearml,
    # dvclive, swanlab (one name or a list; [] or none: no tracker). Each gets every metrics.jsonl number at its step,
    # the resolved config and GRPO/PPO samples, and installs as an extra: pip install "tunekit[wandb]"
    # (docs/trackers.md).
    report_to: str | list[str] = field(default_factory=list)
    # The project (W&B, trackio, Comet, SwanLab, ClearML) or experiment (MLflow) of the run's tracker runs, and the
    # folder of TensorBoard's events under <output_dir>/trackers/. W&B, MLflow and trackio name the run after
    # output_dir's folder.
    tracker_project: str = "tunekit"

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be at least 1, got {self.epochs}")
        require(self.micro_batch_size >= 1, "micro_batch_size", f"must be at least 1, got {self.micro_batch_size}")
        require(self.grad_accum_steps >= 1, "grad_accum_steps", f"must be at least 1, got {self.grad_accum_steps}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be 0 or more, got {self.weight_decay}")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require(self.log_every >= 1, "log_every", f"must be at least 1, got {self.log_every}")
        for key in ("eval_every", "save_every", "keep_checkpoints"):
            value = getattr(self, key)
            require(value >= 0, key, f"must be 0 or more, got {value}")
        require(self.max_bad_steps >= 1, "max_bad_steps", f"must be at least 1, got {self.max_bad_steps}")
        require(self.spike_factor >= 0, "spike_factor", f"must be 0 (off) or more, got {self.spike_factor}")
        multiple = self.pad_to_multiple_of
        require(multiple >= 1, "pad_to_multiple_of", f"must be at least 1, got {multiple}")
        # Checked here, when the config is read, so that a missing tracker package stops the run before anything
        # is loaded or written.
        self.report_to = resolve_report_to(self.report_to)
        require(bool(self.tracker_project.strip()), "tracker_project", "must not be empty")


class Stateful(Protocol):
    """What a recipe's hooks carry from step to step (e.g. PPO's KL coefficient), saved in every checkpoint.

    ``state_dict()`` must hold JSON values under keys other than the runner's own (step, epoch, rng); the runner
    writes it into the checkpoint's state.json and hands it to ``load_state_dict`` when a run resumes from there,
    before the first step.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class RunSpec:
    """Everything the runner needs that is not the model: where to write, and what to train on."""

    output_dir: Path
    config: Any  # the recipe's full config, written to config.yaml
    train: TrainConfig
    seed: int
    max_steps: int | None
    # The checkpoint to continue from, as found by prepare_output_dir (None: a fresh run).
    resume_from: Path | None
    items: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, Any]]
    eval_items: Sequence[Any] = ()
    # Extra evaluation (generation, accuracy...) returning {"name": value}; logged as "eval/name".
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    save_final: Callable[[torch.nn.Module, Path], None] | None = None
    # Turns the sampled micro-batches of a step into the batches trained on (e.g. prompts -> scored rollouts),
    # before the step's item count is taken: prepare(model, micro_batches, step) -> micro_batches.
    prepare: Callable[[torch.nn.Module, list[dict[str, Any]], int], list[dict[str, Any]]] | None = None
    # Optimizer steps taken on each prepared batch (several PPO/GRPO passes over one set of rollouts).
    passes_per_batch: int = 1
    # The micro-batches trained at pass k of a prepared set: select(prepared, k) -> micro_batches (default: all of
    # them every pass). PPO returns one shuffled minibatch per pass; an empty list skips the pass (no update, the
    # schedule moves on), e.g. for PPO's early stop on approximate KL.
    select: Callable[[list[dict[str, Any]], int], list[dict[str, Any]]] | None = None
    # The hooks' own state between steps, checkpointed and restored with the run's (see Stateful).
    state: Stateful | None = None
    # Work done once, with the model on its device and under the run's precision, before the first step (and
    # before the step-0 evaluation): on_start(model). DPO precomputes its reference log-probs here.
    on_start: Callable[[torch.nn.Module], None] | None = None
