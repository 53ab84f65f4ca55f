"""The one accelerate-based training loop. It never knows which algorithm it runs.

A recipe hands :func:`train` a model, its training items (examples, packed rows, pairs, prompts...), a collate
function and a *step function*::

    step(model, batch) -> (loss_sum, metrics)

``loss_sum`` is the loss *summed* over the batch's ``batch["num_items"]`` units (tokens for SFT, pairs for DPO).
The runner divides by the number of units in the whole optimizer step, across micro-batches and processes, so
that 4 micro-batches of 1 give the same update as one batch of 4 whatever their lengths. ``metrics`` are
per-batch means; they are averaged with the same weights.

Items are shuffled per epoch from ``seed + epoch`` alone, so the data position of any step is known from the step
number, and a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tunekit.config import save_config, to_dict
from tunekit.data.collate import to_device
from tunekit.errors import ConfigError, UserError
from tunekit.train.charts import write_run_charts
from tunekit.train.checkpoint import load_checkpoint, recipe_state, run_state, save_checkpoint
from tunekit.train.engines import (
    configure_deepspeed,
    describe,
    full_tensors,
    global_sum,
    is_sharded,
    make_accelerator,
    micro_batch,
)
from tunekit.train.evaluate import run_evaluation
from tunekit.train.experience import experience_to_save, restore_experience
from tunekit.train.log import MetricsLog, Progress
from tunekit.train.optim import build_optimizer, build_scheduler
from tunekit.train.precision import compute
from tunekit.train.rundir import check_room_for_checkpoints
from tunekit.train.signals import PREEMPTED_EXIT_CODE, StopSignal
from tunekit.train.spec import RunSpec, StepFn
from tunekit.train.spikes import SpikeDetector
from tunekit.train.trackers import accelerator_options, end_trackers, start_trackers


@dataclass
class RunResult:
    output_dir: Path
    step: int
    history: list[dict[str, Any]]


class TrainingStopped(UserError):
    """Training could not go on (e.g. repeated non-finite losses); the last good checkpoint is kept."""


def train(spec: RunSpec, model: torch.nn.Module, step_fn: StepFn) -> RunResult:
    """Run the loop described in the module docstring; returns the final step and the logged history.

    The run's experiment trackers (train.report_to) are ended however the loop ends; a run stopped by an error or a
    signal is left failed or killed in the trackers that keep a status.
    """
    try:
        return _train(spec, model, step_fn)
    except BaseException as err:
        end_trackers(err)
        raise


def _train(spec: RunSpec, model: torch.nn.Module, step_fn: StepFn) -> RunResult:
    cfg = spec.train
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; use bf16 on the CPU")
    resume_from = spec.resume_from
    accelerator = make_accelerator(cfg.mixed_precision, **accelerator_options(cfg.report_to, spec.output_dir))
    world = accelerator.num_processes
    if world > 1:
        accelerator.print(f"{describe(accelerator)}, {world} processes")
    per_step = cfg.micro_batch_size * world * cfg.grad_accum_steps
    data_steps_per_epoch = len(spec.items) // per_step
    steps_per_epoch = data_steps_per_epoch * spec.passes_per_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"one optimizer step needs {per_step} items (micro_batch_size {cfg.micro_batch_size} x "
            f"{world} processes x grad_accum_steps {cfg.grad_accum_steps}) but the data has {len(spec.items)}"
        )
    total_steps = steps_per_epoch * cfg.epochs
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)

    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    if accelerator.is_main_process:
        # Weights plus AdamW's two moments.
        check_room_for_checkpoints(spec.output_dir, 3 * trainable_bytes)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    start_step = 0
    sharded = is_sharded(accelerator)
    spikes = SpikeDetector(cfg.spike_factor)
    if resume_from is not None:
        # Under FSDP/ZeRO the optimizer's moments are sharded per process; a checkpoint holds gathered weights,
        # and the moments start afresh (see docs/multi-gpu.md).
        saved = load_checkpoint(resume_from, model, None if sharded else optimizer, scheduler)
        start_step = saved["step"]
        if spec.state is not None:
            spec.state.load_state_dict(recipe_state(saved))
        spikes.load_state_dict(saved.get("spikes", []))
        accelerator.print(f"resuming from {resume_from} at step {start_step}")
        if sharded:
            accelerator.print(
                "resuming a sharded run: weights, schedule and data position restored; optimizer moments reset"
            )
    configure_deepspeed(accelerator, cfg.micro_batch_size, cfg.max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)
    # FSDP2 replaces parameters with sharded ones while wrapping, so they are looked up again by name.
    trainable = {n: p for n, p in accelerator.unwrap_model(model).named_parameters() if n in trainable_names}

    out = spec.output_dir
    history: list[dict[str, Any]] = []
    log = None
    # Before anything is written: a tracker that cannot start leaves a fresh output_dir as it found it.
    trackers = start_trackers(
        accelerator, cfg.tracker_project, to_dict(spec.config), out, start_step if resume_from else None
    )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(spec.config, out / "config.yaml")
        # Lines past the resumed step (or every line, when a killed run left no checkpoint) are dropped, so the
        # file always tells one consistent history.
        log = MetricsLog(out / "metrics.jsonl", resume_step=start_step if resume_from else -1)
    progress = Progress(total_steps, start_step, cfg.progress and accelerator.is_main_process)

    def checkpoint(step: int, prepared: list[dict[str, Any]] | None) -> None:
        accelerator.wait_for_everyone()
        weights = full_tensors(accelerator, trainable)  # a collective when sharded: every process takes part
        experience = experience_to_save(accelerator, prepared, step, spec.passes_per_batch)  # a collective too
        if accelerator.is_main_process:
            epoch = step / steps_per_epoch
            save_checkpoint(
                out,
                step,
                weights,
                # A sharded run's moments are split across processes and never restored (see above).
                None if sharded else (optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer),
                scheduler,
                run_state(epoch, spec.state.state_dict() if spec.state is not None else {}, spikes.state_dict()),
                cfg.keep_checkpoints,
                experience,
            )
        accelerator.wait_for_everyone()

    def micro_batches(step: int) -> list[dict[str, Any]]:
        """The micro-batches this process trains on at optimizer step ``step`` (0-based)."""
        epoch, within = divmod(step // spec.passes_per_batch, data_steps_per_epoch)
        order = torch.randperm(len(spec.items), generator=torch.Generator().manual_seed(spec.seed + epoch)).tolist()
        # A data mixture draws its items afresh each epoch, from the seed and the epoch alone (data/mixture.py).
        items = spec.items.for_epoch(epoch) if hasattr(spec.items, "for_epoch") else spec.items
        batches = []
        for k in range(cfg.grad_accum_steps):
            start = (within * cfg.grad_accum_steps + k) * cfg.micro_batch_size * world
            mine = order[start + accelerator.process_index * cfg.micro_batch_size :][: cfg.micro_batch_size]
            batches.append(to_device(spec.collate([items[i] for i in mine]), accelerator.device))
        return batches

    if spec.on_start is not None:
        with compute(accelerator, model):
            spec.on_start(model)
    if cfg.eval_every and start_step == 0:
        # A step-0 evaluation is the baseline every curve is read against.
        baseline = {"step": 0, "epoch": 0.0, **run_evaluation(spec, model, step_fn, accelerator)}
        if len(baseline) > 2:
            history.append(baseline)
            if log is not None:
                log.write(baseline)
            trackers.log(baseline)
    bad_in_a_row = skipped_total = 0
    step = start_step
    window_tokens, window_start = 0, time.perf_counter()
    with StopSignal() as stop:
        # A run resumed part-way through a batch's passes trains on the batch the interrupted run had prepared.
        prepared = restore_experience(accelerator, resume_from, step, spec.passes_per_batch) if resume_from else None
        while step < total_steps:
            if prepared is None or step % spec.passes_per_batch == 0:
                prepared = micro_batches(step)
                if spec.prepare is not None:
                    # Not under compute(): generation with fp32 weights under autocast recasts every weight at
                    # every new token, which on a GPU is slower than decoding in fp32 (measured in GRPO).
                    prepared = spec.prepare(model, prepared, step)
            batches = prepared if spec.select is None else spec.select(prepared, step % spec.passes_per_batch)
            skipped = not batches
            model.train()
            step_items = global_sum(accelerator, sum(float(b["num_items"]) for b in batches))
            loss_total = torch.zeros((), device=accelerator.device)
            sums: dict[str, float] = {}
            for k, batch in enumerate(batches):
                last = k == len(batches) - 1
                with micro_batch(accelerator, model, last), compute(accelerator, model):
                    loss_sum, metrics = step_fn(model, batch)
                    # DDP averages gradients over processes; multiplying by world undoes that average so the
                    # result is the mean over every unit of the global step.
                    accelerator.backward(loss_sum * (world / max(step_items, 1.0)))
                loss_total += loss_sum.detach().float()
                weight = float(batch["num_items"])
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * weight
                window_tokens += int(batch.get("num_tokens", batch["num_items"]))
            # max_grad_norm <= 0 turns clipping off; the norm is still measured and logged.
            grad_norm = accelerator.clip_grad_norm_(
                model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
            )
            loss_mean = global_sum(accelerator, float(loss_total)) / max(step_items, 1.0)
            finite = math.isfinite(loss_mean) and math.isfinite(float(grad_norm))
            if finite:
                optimizer.step()
                bad_in_a_row = 0
            else:
                bad_in_a_row += 1
                skipped_total += 1
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if not finite and bad_in_a_row >= cfg.max_bad_steps:
                raise TrainingStopped(
                    f"stopped at step {step}: {bad_in_a_row} steps in a row had a non-finite loss or gradient "
                    f"(the last good checkpoint in {out / 'checkpoints'} is kept)"
                )

            spike = finite and not skipped and spikes.is_spike(loss_mean)
            evaluating = (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps
            if (step % cfg.log_every == 0 and not skipped) or evaluating or spike or not finite:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "loss": loss_mean,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": global_sum(accelerator, window_tokens) / max(elapsed, 1e-9),
                    **{k: global_sum(accelerator, v) / max(step_items, 1.0) for k, v in sorted(sums.items())},
                }
                if skipped:
                    del record["loss"], record["grad_norm"]
                    record["skipped_pass"] = True
                if skipped_total:
                    record["nonfinite_steps_skipped"] = skipped_total  # in this process's run so far
                if not finite:
                    record["skipped_nonfinite"] = True
                elif spike:
                    # Distinct rows, in batch order (a GRPO group's completions share their prompt's row).
                    rows = (i for b in batches if "example_ids" in b for i in b["example_ids"].tolist())
                    ids = list(dict.fromkeys(rows))
                    record["loss_spike"] = True
                    record["spike_example_ids"] = ids
                    accelerator.print(f"step {step}: loss {loss_mean:.4g} is a spike; its examples: {ids}")
                window_tokens, window_start = 0, time.perf_counter()
                if evaluating:
                    record.update(run_evaluation(spec, model, step_fn, accelerator))
                    window_start = time.perf_counter()
                history.append(record)
                if log is not None:
                    log.write(record)
                trackers.log(record)
                progress.update(record)
            else:
                progress.update({})
            if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps:
                checkpoint(step, prepared)
                window_start = time.perf_counter()
            if stop.received is not None and step < total_steps:
                if not (cfg.save_every and step % cfg.save_every == 0):
                    checkpoint(step, prepared)
                progress.close()
                accelerator.print(
                    f"received signal {stop.received}: saved checkpoint step-{step} in {out / 'checkpoints'}; "
                    "continue with resume=auto"
                )
                raise SystemExit(PREEMPTED_EXIT_CODE)
    progress.close()
    if log is not None:
        log.close()
    if accelerator.is_main_process:
        # out/plots/*.png, from the finished metrics.jsonl and before final/, whose model card shows them; a failure
        # to draw is a logged warning, never a failed run.
        write_run_charts(out)
    if spec.save_final is not None:
        # Sharded engines gather the whole state dict (every process takes part); otherwise the model saves its own.
        state_dict = accelerator.get_state_dict(model) if sharded else None
        if accelerator.is_main_process:
            save = spec.save_final if state_dict is None else partial(spec.save_final, state_dict=state_dict)
            _save_final_atomically(save, accelerator.unwrap_model(model), out / "final")
    accelerator.wait_for_everyone()
    trackers.finish()
    return RunResult(out, step, history)


def _save_final_atomically(save: Callable[[torch.nn.Module, Path], None], model: torch.nn.Module, final: Path) -> None:
    """Write final/ under a temporary name and rename it into place, so a reader never sees half of it."""
    tmp = final.with_name(".final-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
