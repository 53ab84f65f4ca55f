"""The reference side for SFT: the issue's "bare hand-written loop", on the same tokens as the other sides.

Each step takes the same examples tunekit's step takes (tunekit's order), lays their tokens end to end and cuts
the stream into ``batch_size`` dense rows of one width (the last few tokens, fewer than ``batch_size``, are
dropped). Then a peft LoRA model (the same adapters) trains on those rows with a plain next-token loss at every
position: no padding, no prompt masking, no per-example attention, no data pipeline, no logging. Examples attend
across their borders and prompts are trained on, so it is not a correct SFT step; it is the speed of the model's
own arithmetic on this machine, which the trainers are measured against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from flops import Dims, sft_step_flops
from gate import Finished, Gate
from workload import Workload, sft_examples


def dense_rows(token_ids: list[list[int]], rows: int) -> torch.Tensor:
    """``[rows, width]`` token ids: the examples' tokens end to end, cut into rows of one width, the remainder
    dropped (width = total // rows)."""
    stream = [token for ids in token_ids for token in ids]
    width = len(stream) // rows
    return torch.tensor(stream[: rows * width]).view(rows, width)


def run(work: Workload, setting: dict[str, Any], gate: Gate, output_dir: Path, max_steps: int) -> list[float]:
    """Train until the gate says stop; returns the loss of every step taken."""
    if work.recipe != "sft":
        raise ValueError(f"the bare loop is an SFT reference; got recipe {work.recipe!r}")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(work.seed)
    tokenizer = AutoTokenizer.from_pretrained(work.model)
    dtype = torch.bfloat16 if work.weights == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(work.model, dtype=dtype).to(work.device)
    lora = LoraConfig(r=work.lora_r, lora_alpha=work.lora_alpha, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=work.lr, weight_decay=0.0)
    forward = torch.compile(model) if setting.get("compile") else model
    examples = sft_examples(work, tokenizer)
    dims = Dims.from_model_dir(work.model, work.lora_r)
    losses: list[float] = []
    for step in range(max_steps + 1):
        try:
            gate.boundary(step)
        except Finished:
            break
        chunk = [examples[(step * work.batch_size + i) % len(examples)] for i in range(work.batch_size)]
        ids = dense_rows([e.input_ids for e in chunk], work.batch_size).to(work.device)
        rows, width = ids.shape
        gate.record(ids.numel(), ids.numel(), sft_step_flops(dims, [width] * rows, rows * (width - 1)))
        with torch.autocast(work.device, dtype=torch.bfloat16, enabled=work.precision == "bf16"):
            logits = forward(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses
