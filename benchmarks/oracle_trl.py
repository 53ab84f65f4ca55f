"""The TRL side of grpo_oracle.py: TRL's GRPOTrainer on the setup of a tunekit GRPO config.

Everything the two trainers share is taken from the tunekit config and tunekit's own data code, and mapped onto
TRL's arguments (:func:`trl_arguments`); what TRL cannot be made to do the same way is listed by :func:`unaligned`.

- Prompts: the dataset is laid out in the order tunekit's runner draws them (per epoch a permutation seeded with
  ``seed + epoch``; a step takes the next ``micro_batch_size x grad_accum_steps`` prompts; prompts that do not fill a
  step sit the epoch out), and TRL reads it without shuffling (``shuffle_dataset=False``), so optimizer step k of
  both sides trains on the same prompts. TRL still shuffles the completions of a step among its micro-batches,
  which leaves the step's loss unchanged when the micro-batches are of equal size.
- Prompt tokens: TRL tokenizes the prompt text itself. Before training, every training prompt is run through
  TRL's own tokenizing method and compared with tunekit's ids (BOS + the text without special tokens); where they
  differ, tunekit's ids are handed to TRL instead. During training the ids TRL generated from are recorded and
  compared with tunekit's, step by step.
- Loss: tunekit's aggregation "sequence" is TRL's "grpo", "token" is "dapo" (one mean over every completion token
  of the optimizer step; TRL's "bnpo" would average per micro-batch), "dr_grpo" is "dr_grpo". The KL term is the
  plain k3 estimate on both sides (TRL's default ``use_bias_correction_kl`` would multiply it by the importance
  ratio, which changes its gradient even on-policy). TRL's loss forward gives left-padded rows positions counted
  from the padding; with rotary embeddings only position differences matter, so the log-probs agree up to rounding.
- Optimizer: AdamW with torch's defaults and weight decay on every trainable parameter, as tunekit does (the
  Trainer would exempt biases and norms); the warm-up is tunekit's ``int(warmup_ratio * steps)`` (the Trainer would
  round up).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

LOSS_TYPES = {"sequence": "grpo", "token": "dapo", "dr_grpo": "dr_grpo"}
OPTIMIZERS = {
    "adamw": "adamw_torch",
    "sgd": "sgd",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
}


def total_steps(config: Any, num_prompts: int) -> int:
    """The optimizer steps tunekit's runner takes for ``config`` on ``num_prompts`` training prompts (one process)."""
    per_step = config.train.micro_batch_size * config.train.grad_accum_steps
    steps = (num_prompts // per_step) * config.loss.passes * config.train.epochs
    return steps if config.max_steps is None else min(steps, config.max_steps)


def tunekit_batches(prompts: list[Any], config: Any, steps: int) -> list[list[Any]]:
    """The prompts of each set of rollouts tunekit's runner draws in ``steps`` optimizer steps (one per
    ``loss.passes`` steps), in its order (see tunekit/train/runner.py, ``micro_batches``)."""
    per_step = config.train.micro_batch_size * config.train.grad_accum_steps
    per_epoch = len(prompts) // per_step
    orders: dict[int, list[int]] = {}
    batches = []
    for b in range(math.ceil(steps / config.loss.passes)):
        epoch, within = divmod(b, per_epoch)
        if epoch not in orders:
            generator = torch.Generator().manual_seed(config.seed + epoch)
            orders[epoch] = torch.randperm(len(prompts), generator=generator).tolist()
        batches.append([prompts[i] for i in orders[epoch][within * per_step : (within + 1) * per_step]])
    return batches


def trl_arguments(config: Any, steps: int, output_dir: Path) -> dict[str, Any]:
    """TRL GRPOConfig keyword arguments for the tunekit ``config`` trained for ``steps`` optimizer steps."""
    train, sampling, loss = config.train, config.sampling, config.loss
    warmup = int(train.warmup_ratio * steps)
    scheduler = {"constant": "constant_with_warmup" if warmup else "constant"}.get(train.scheduler, train.scheduler)
    return {
        "output_dir": str(output_dir),
        "seed": config.seed,
        "max_steps": steps,
        # TRL's batch counts completions: prompts x num_generations.
        "per_device_train_batch_size": train.micro_batch_size * sampling.num_generations,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "shuffle_dataset": False,  # the dataset is already in tunekit's order
        "learning_rate": train.lr,
        "lr_scheduler_type": scheduler,
        "warmup_steps": warmup,
        "weight_decay": train.weight_decay,
        "optim": OPTIMIZERS[train.optimizer],
        # tunekit's TrainConfig names no betas or eps: both sides use torch's AdamW defaults.
        "adam_beta1": getattr(train, "adam_beta1", 0.9),
        "adam_beta2": getattr(train, "adam_beta2", 0.999),
        "adam_epsilon": getattr(train, "adam_epsilon", 1e-8),
        "max_grad_norm": max(train.max_grad_norm, 0.0),
        "num_generations": sampling.num_generations,
        "max_completion_length": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "beta": loss.kl_beta,
        "use_bias_correction_kl": False,
        "epsilon": loss.clip_low,
        "epsilon_high": loss.clip_high,
        "loss_type": LOSS_TYPES[loss.aggregation],
        "scale_rewards": "group" if loss.scale_rewards else "none",
        "num_iterations": loss.passes,
        "mask_truncated_completions": loss.truncated == "mask",
        "bf16": train.mixed_precision == "bf16",
        "fp16": False,
        "use_cpu": not torch.cuda.is_available(),
        "gradient_checkpointing": config.model.gradient_checkpointing,
        "torch_compile": train.compile,
        "disable_dropout": False,  # dropout as the model (and adapter) configure it, as in tunekit
        "logging_steps": 1,
        "log_completions": False,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def unaligned(config: Any) -> list[str]:
    """What differs between the two sides for ``config``, beyond the sampling noise every run has."""
    notes = [
        "each side samples its own completions (tunekit's decode loop, TRL's transformers generate) from its own "
        "random stream, so the rollouts differ even where the weights agree"
    ]
    if config.sampling.temperature not in (0, 1):
        notes.append(
            f"temperature {config.sampling.temperature}: TRL's log-probs (ratio, KL) are of the tempered "
            "distribution (logits / T); tunekit's are of the untempered policy"
        )
    if config.loss.skip_equal_groups:
        notes.append("loss.skip_equal_groups: TRL has no such option and trains on zero-advantage groups too")
    return notes


def check_supported(config: Any) -> None:
    """Refuse what the TRL side cannot run like tunekit, with a SystemExit that says why."""
    if config.sampling.temperature <= 0:
        raise SystemExit("sampling.temperature=0: TRL always samples (and GRPO's groups would all be one answer)")
    if config.sampling.stop_strings:
        raise SystemExit("sampling.stop_strings: TRL's generate call takes no tokenizer, so it cannot stop on text")
    if config.model.adapter.method not in ("lora", "dora", "full"):
        raise SystemExit(f"model.adapter.method={config.model.adapter.method}: the oracle maps lora, dora and full")
    if config.model.quantization != "none":
        raise SystemExit("model.quantization: the oracle trains TRL on unquantised weights only")
    if config.model.adapter.method == "full" and (Path(config.model.path) / "adapter_config.json").is_file():
        raise SystemExit(
            "full training from an adapter directory: export the merged model first (TRL's reference "
            "would be the adapter's base)"
        )


def policy(config: Any, start: Path) -> tuple[torch.nn.Module, Any]:
    """The model TRL starts from and the peft config it adds (None: train all weights, or continue an adapter)."""
    from peft import LoraConfig, PeftModel
    from policy_eval import load_policy

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.model.dtype]
    attn = config.model.attn_implementation
    adapter = config.model.adapter
    if adapter.method == "full":
        return load_policy(start, dtype, attn), None
    if (start / "adapter_config.json").is_file():
        # tunekit continues an earlier adapter; TRL does too, with a frozen copy of it as the reference.
        base = load_policy(json.loads((start / "adapter_config.json").read_text())["base_model_name_or_path"], dtype)
        return PeftModel.from_pretrained(base, str(start), is_trainable=True), None
    targets = "all-linear" if adapter.target_modules == ["all-linear"] else list(adapter.target_modules)
    peft_config = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
        use_dora=adapter.method == "dora",
        use_rslora=adapter.use_rslora,
        task_type="CAUSAL_LM",
    )
    return load_policy(start, dtype, attn), peft_config


def reward_functions(config: Any, columns: list[str], ends: list[int]) -> tuple[list[Any], list[float]]:
    """tunekit's reward sources as TRL reward functions, and their weights.

    TRL calls a reward function with the dataset's columns plus its own extras (completion_ids, trainer_state...);
    each wrapper passes on only the data columns and the source's own options, as tunekit does. A truncation
    penalty (loss.truncated=penalize) becomes one more source of weight 1.
    """
    from tunekit.rl.rewards import load_reward_function

    funcs, weights = [], []
    for source in config.rewards:
        fn = load_reward_function(source.name)

        def reward(prompts: list[str], completions: list[str], _fn: Any = fn, _source: Any = source, **kw: Any):
            data = {k: kw[k] for k in columns if k in kw}
            return [float(v) for v in _fn(prompts=prompts, completions=completions, **{**data, **_source.kwargs})]

        reward.__name__ = source.name
        funcs.append(reward)
        weights.append(float(source.weight))
    if config.loss.truncated == "penalize":
        penalty, limit = config.loss.truncation_penalty, config.sampling.max_new_tokens

        def truncated(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any):
            # Cut at the limit without an end token: tunekit's definition of a truncated completion.
            return [penalty if len(ids) >= limit and ids[-1] not in ends else 0.0 for ids in completion_ids]

        funcs.append(truncated)
        weights.append(1.0)
    return funcs, weights


def run(config: Any, train_prompts: list[Any], tokenizer: Any, start: Path, steps: int, out: Path) -> dict[str, Any]:
    """Train with TRL's GRPOTrainer for ``steps`` optimizer steps; final weights in ``out/final``."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    check_supported(config)
    batches = tunekit_batches(train_prompts, config, steps)
    rows = [p for batch in batches for p in batch]
    columns = list(rows[0].columns)
    dataset = Dataset.from_list([{"prompt": p.prompt, **p.columns} for p in rows])
    expected = {p.prompt: list(p.prompt_ids) for p in train_prompts}

    class OracleTrainer(GRPOTrainer):
        """GRPOTrainer that records the prompt ids it generates from, can be given tunekit's, and decays every
        trainable parameter (as tunekit's AdamW does)."""

        seen: list[list[list[int]]] = []
        given: dict[str, list[int]] | None = None

        def _tokenize_prompts(self, prompts: list) -> Any:
            ids, images, fields = super()._tokenize_prompts(prompts)
            if self.given is not None:
                ids = [self.given[p] for p in prompts]
            self.seen.append([list(i) for i in ids])
            return ids, images, fields

        def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
            return [name for name, _ in model.named_parameters()]

    started = time.perf_counter()
    model, peft_config = policy(config, start)
    configured = model.generation_config.eos_token_id
    ends = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    funcs, weights = reward_functions(config, columns, [e for e in ends if e is not None])
    args = trl_arguments(config, steps, out)
    trainer = OracleTrainer(
        model=model,
        reward_funcs=funcs,
        args=GRPOConfig(**args, reward_weights=weights),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    texts = list(expected)
    own = [list(i) for i in super(OracleTrainer, trainer)._tokenize_prompts(texts)[0]]
    mismatched = sum(a != expected[t] for t, a in zip(texts, own, strict=True))
    if mismatched:
        trainer.given = expected
    trainer.seen = []
    trainer.remove_callback(PrinterCallback)  # the step logs stay in log_history (and the JSON), off the terminal
    trained = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - trained
    final = out / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    wall_s = time.perf_counter() - started
    want = [[list(p.prompt_ids) for p in batch for _ in range(config.sampling.num_generations)] for batch in batches]
    return {
        "final": str(final),
        "steps": trainer.state.global_step,
        "wall_s": wall_s,
        "train_s": train_s,
        "arguments": {**args, "reward_weights": weights},
        "tokenization": {"checked": len(texts), "mismatched": mismatched, "tunekit_ids_given": bool(mismatched)},
        "prompt_ids_match": trainer.seen == want,
        "generation_batches": len(trainer.seen),
        "log_history": trainer.state.log_history,
    }
