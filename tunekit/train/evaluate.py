"""Held-out evaluation at the runner's evaluation steps, the same on one process and many."""

from __future__ import annotations

from typing import Any

import torch

from tunekit.data.collate import to_device
from tunekit.train.engines import global_sum
from tunekit.train.precision import compute
from tunekit.train.spec import RunSpec, StepFn


def run_evaluation(spec: RunSpec, model: torch.nn.Module, step_fn: StepFn, accelerator: Any) -> dict[str, float]:
    """``{"eval/loss": ..., "eval/<metric>": ...}`` over ``spec.eval_items``, plus ``spec.evaluate``'s results.

    The loss and metrics are weighted by each batch's ``num_items`` and summed over processes, so they are the
    mean over every held-out unit whatever the process count. Leaves the model in train mode.
    """
    if not spec.eval_items and spec.evaluate is None:
        return {}
    model.eval()
    results: dict[str, float] = {}
    if spec.eval_items:
        world, rank, size = accelerator.num_processes, accelerator.process_index, spec.train.micro_batch_size
        loss_total, items = 0.0, 0.0
        sums: dict[str, float] = {}
        rounds = -(-len(spec.eval_items) // (world * size))
        with torch.no_grad(), compute(accelerator, model):
            for round_index in range(rounds):
                start = (round_index * world + rank) * size
                # Every process runs the same number of forwards: under DDP (buffer broadcast), FSDP and ZeRO-3
                # (weight gathers) a forward is a collective. A process whose share has run out repeats the first
                # batch and counts nothing of it.
                counts = start < len(spec.eval_items)
                chunk = spec.eval_items[start : start + size] if counts else spec.eval_items[:size]
                batch = to_device(spec.collate(list(chunk)), accelerator.device)
                loss_sum, metrics = step_fn(model, batch)
                weight = float(batch["num_items"]) if counts else 0.0
                loss_total += float(loss_sum) if counts else 0.0
                items += weight
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * weight
        items = global_sum(accelerator, items)
        results["eval/loss"] = global_sum(accelerator, loss_total) / max(items, 1.0)
        for key, value in sorted(sums.items()):
            results[f"eval/{key}"] = global_sum(accelerator, value) / max(items, 1.0)
    if spec.evaluate is not None:
        with torch.no_grad():
            results.update({f"eval/{k}": v for k, v in spec.evaluate(accelerator.unwrap_model(model)).items()})
    model.train()
    return results
