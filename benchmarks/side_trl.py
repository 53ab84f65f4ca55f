"""The TRL side: SFTTrainer, DPOTrainer or GRPOTrainer on the same model, tokens and hyperparameters.

The data is tokenized by tunekit's own code and handed to TRL already tokenized, so both sides train on exactly the
same token ids (TRL would otherwise tokenize prompt and completion jointly, which can merge tokens across the
border). Where both sides train on single examples (SFT without packing, DPO), TRL reads them in tunekit's order,
so step k of each side trains on the same examples. The pause gate sits in a trainer callback at the end of
each optimizer step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from flops import Dims, sft_step_flops
from gate import Finished, Gate
from workload import Workload, dpo_data_config, grpo_data_config, sft_examples, tunekit_order


def sft_dataset(work: Workload, tokenizer: Any) -> Any:
    from datasets import Dataset

    examples = sft_examples(work, tokenizer)
    return Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})


def dpo_dataset(work: Workload, tokenizer: Any) -> Any:
    from datasets import Dataset

    from tunekit.config import from_dict
    from tunekit.data.pairs import PairDataConfig, load_pair_data

    config = from_dict(PairDataConfig, dpo_data_config(work))
    pairs, _, _ = load_pair_data(config, tokenizer, work.seed, lambda n, s: [])
    pairs = [pairs[i] for i in tunekit_order(len(pairs), work.seed)]
    return Dataset.from_dict(
        {
            "prompt_ids": [p.prompt_ids for p in pairs],
            "chosen_ids": [p.chosen_ids for p in pairs],
            "rejected_ids": [p.rejected_ids for p in pairs],
        }
    )


def grpo_dataset(work: Workload, tokenizer: Any) -> Any:
    from datasets import Dataset

    from tunekit.config import from_dict
    from tunekit.data.prompts import PromptDataConfig, load_prompts

    config = from_dict(PromptDataConfig, grpo_data_config(work))
    prompts = load_prompts(config, tokenizer, work.seed).train
    return Dataset.from_dict({"prompt": [p.prompt for p in prompts], "answer": [p.columns["answer"] for p in prompts]})


def common_args(work: Workload, setting: dict[str, Any], output_dir: Path, max_steps: int) -> dict[str, Any]:
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": work.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": work.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_steps": max_steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": work.seed,
        "bf16": work.precision == "bf16",
        "fp16": False,
        "use_cpu": work.device == "cpu",
        "gradient_checkpointing": bool(setting.get("gradient_checkpointing", False)),
        "dataloader_num_workers": 0,
        "torch_compile": bool(setting.get("compile", False)),
    }


def run(work: Workload, setting: dict[str, Any], gate: Gate, output_dir: Path, max_steps: int) -> list[float]:
    """Train until the gate says stop; returns the loss of every logged step."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(work.model)
    dtype = torch.bfloat16 if work.weights == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(work.model, dtype=dtype)
    peft_config = LoraConfig(
        r=work.lora_r, lora_alpha=work.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    args = common_args(work, setting, output_dir, max_steps)

    class GateCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if work.recipe == "grpo":
                gate.record(work.batch_size, 0)
            try:
                gate.boundary(state.global_step)
            except Finished:
                control.should_training_stop = True
            return control

    trainer = build_trainer(work, setting, model, tokenizer, peft_config, args)
    if work.recipe != "grpo":
        dims = Dims.from_model_dir(work.model, work.lora_r)
        trainer.data_collator = CountingCollator(trainer.data_collator, gate, work.recipe, dims)
    trainer.add_callback(GateCallback())
    trainer.train()
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]


class CountingCollator:
    """Records each batch's units and real tokens with the gate, then returns the batch unchanged."""

    def __init__(self, collator: Any, gate: Gate, recipe: str, dims: Dims) -> None:
        self.collator, self.gate, self.recipe, self.dims = collator, gate, recipe, dims

    def __call__(self, examples: list[Any]) -> dict[str, Any]:
        batch = self.collator(examples)
        if "attention_mask" in batch:
            tokens = float(batch["attention_mask"].sum())
        else:  # padding-free: one flattened row of real tokens
            tokens = float(batch["input_ids"].numel())
        if self.recipe == "dpo":
            self.gate.record(len(examples), tokens)
            return batch
        lengths = [n for e in examples for n in e.get("seq_lengths", [len(e["input_ids"])])]
        labels = sum(label != -100 for e in examples for label in e["labels"])
        self.gate.record(tokens, tokens, sft_step_flops(self.dims, lengths, labels))
        return batch


def build_trainer(work: Workload, setting: dict[str, Any], model: Any, tokenizer: Any, peft_config: Any, args: dict):
    from torch.utils.data import SequentialSampler

    if work.recipe == "sft":
        from trl import SFTConfig, SFTTrainer

        packing = bool(setting.get("packing", False))
        config = SFTConfig(**args, max_length=work.max_length, packing=packing, dataset_num_proc=None)

        class Trainer(SFTTrainer):
            def _get_train_sampler(self, *a: Any, **k: Any) -> Any:
                # Unpacked: tunekit's order (the dataset is already in it). Packed rows differ between the two
                # sides anyway, so TRL keeps its own shuffled order there.
                return super()._get_train_sampler(*a, **k) if packing else SequentialSampler(self.train_dataset)

        return Trainer(
            model=model,
            args=config,
            train_dataset=sft_dataset(work, tokenizer),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    if work.recipe == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(
            **args, max_length=work.max_length, beta=work.beta, loss_type=["sigmoid"], precompute_ref_log_probs=False
        )

        class Trainer(DPOTrainer):
            def _prepare_dataset(self, dataset: Any, *a: Any, **k: Any) -> Any:
                return dataset  # already tokenized by tunekit's code: prompt_ids, chosen_ids, rejected_ids

            def _get_train_sampler(self, *a: Any, **k: Any) -> Any:
                return SequentialSampler(self.train_dataset)

        return Trainer(
            model=model,
            args=config,
            train_dataset=dpo_dataset(work, tokenizer),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    from trl import GRPOConfig, GRPOTrainer

    from tunekit.rl.rewards import load_reward_function

    reward = load_reward_function("math_correct")

    def math_correct(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [float(r) for r in reward(prompts=prompts, completions=completions, answer=answer)]

    config = GRPOConfig(
        **args,
        num_generations=work.num_generations,
        max_completion_length=work.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="dapo",
        epsilon=0.2,
        num_iterations=1,
        scale_rewards="group",
        log_completions=False,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=[math_correct],
        args=config,
        train_dataset=grpo_dataset(work, tokenizer),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
