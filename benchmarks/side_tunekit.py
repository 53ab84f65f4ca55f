"""The tunekit side: the recipe's public ``run(config)``, exactly as a user runs it, with a pause gate.

The gate is added by wrapping the collate function the recipe hands to the runner (tunekit collates each
step's batch when the step starts and never ahead), so nothing inside the training step changes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from flops import Dims, sft_step_flops
from gate import Finished, Gate
from workload import Workload, dpo_data_config, grpo_data_config, sft_data_config

from tunekit.config import from_dict


def config_dict(work: Workload, setting: dict[str, Any], output_dir: Path, max_steps: int) -> dict[str, Any]:
    """The recipe config of ``work``; ``setting`` holds this side's own choices (e.g. packing)."""
    train = {
        "micro_batch_size": work.batch_size,
        "grad_accum_steps": 1,
        "epochs": 100,
        "lr": work.lr,
        "scheduler": "constant",
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "mixed_precision": "bf16" if work.precision == "bf16" else "no",
        "log_every": 1,
        "eval_every": 0,
        "save_every": 0,
        "progress": False,
        "compile": bool(setting.get("compile", False)),
    }
    model = {
        "path": work.model,
        "dtype": work.weights,
        "gradient_checkpointing": bool(setting.get("gradient_checkpointing", False)),
        "adapter": {"method": "lora", "r": work.lora_r, "alpha": work.lora_alpha, "dropout": 0.0},
    }
    config: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": work.seed,
        "max_steps": max_steps,
        "model": model,
        "train": train,
    }
    if work.recipe == "sft":
        config["data"] = sft_data_config(work, packing=bool(setting.get("packing", False)))
    elif work.recipe == "dpo":
        config["data"] = dpo_data_config(work)
        config["loss"] = {"loss_type": "sigmoid", "beta": work.beta}
        config["reference"] = "on_the_fly"
    else:
        config["data"] = grpo_data_config(work)
        # The micro-batch counts prompts; each brings num_generations completions.
        train["micro_batch_size"] = work.batch_size // work.num_generations
        config["sampling"] = {
            "num_generations": work.num_generations,
            "max_new_tokens": work.max_new_tokens,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
        }
        # TRL's GRPOTrainer defaults: no KL term, token-level aggregation (its "dapo"), symmetric clipping.
        config["loss"] = {"kl_beta": 0.0, "aggregation": "token", "clip_low": 0.2, "clip_high": 0.2, "passes": 1}
        config["sample_every"] = 0
    return config


def run(work: Workload, setting: dict[str, Any], gate: Gate, output_dir: Path, max_steps: int) -> list[float]:
    """Train until the gate says stop; returns the loss of every step taken."""
    module = importlib.import_module(f"tunekit.recipes.{work.recipe}")
    config_cls = {"sft": "SFTConfig", "dpo": "DPOConfig", "grpo": "GRPOConfig"}[work.recipe]
    # One step beyond the last boundary, so that the last window ends where that step would start.
    config = from_dict(getattr(module, config_cls), config_dict(work, setting, output_dir, max_steps + 1))
    real_train = module.train
    dims = Dims.from_model_dir(work.model, work.lora_r)

    def gated_train(spec: Any, model: Any, step_fn: Any) -> Any:
        collate = spec.collate
        calls = [0]

        def gated_collate(items: list[Any]) -> dict[str, Any]:
            gate.boundary(calls[0])
            batch = collate(items)
            calls[0] += 1
            if work.recipe == "grpo":
                gate.record(len(items) * work.num_generations, 0)
            elif work.recipe == "dpo":
                gate.record(float(batch["num_items"]), float(batch["num_tokens"]))
            else:
                examples = [e for item in items for e in (item if isinstance(item, list) else [item])]
                lengths = [len(e.input_ids) for e in examples]
                flops = sft_step_flops(dims, lengths, int(batch["num_items"]))
                gate.record(float(batch["num_tokens"]), float(batch["num_tokens"]), flops)
            return batch

        spec.collate = gated_collate
        return real_train(spec, model, step_fn)

    module.train = gated_train
    try:
        module.run(config)
    except Finished:
        pass
    finally:
        module.train = real_train
    from tunekit.train.log import read_metrics

    metrics = output_dir / "metrics.jsonl"
    return [float(r["loss"]) for r in read_metrics(metrics)] if metrics.exists() else []
