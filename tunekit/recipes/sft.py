"""Supervised fine-tuning: next-token loss on completions or assistant turns, with LoRA, DoRA, QLoRA or full.

    python -m tunekit.recipes.sft                                   # embedded tiny model and data, offline
    python -m tunekit.recipes.sft --config recipes/sft/llama-qlora.yaml data.path=my.jsonl

See docs/sft.md for the keys and docs/data.md for the data formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from tunekit.data import synthetic
from tunekit.data.collate import collate_examples, collate_packed, collate_padding_free, model_inputs
from tunekit.data.mixing import source_losses
from tunekit.data.packing import pack_examples
from tunekit.data.sft import DataConfig, load_sft_data
from tunekit.errors import require
from tunekit.losses.sft import label_cross_entropy, token_cross_entropy, with_router_aux_loss
from tunekit.models.adapters import apply_adapter, check_adapter_use, trained_summary
from tunekit.models.load import load_model, load_tokenizer, use_router_aux_loss
from tunekit.models.logprobs import causal_lm_forward, label_logits
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
from tunekit.train.spec import step_result


@dataclass
class SFTConfig(RecipeConfig):
    data: DataConfig = field(default_factory=DataConfig)
    # Mixture-of-experts models: weight of the router's load-balancing loss added to the next-token loss (null: the
    # model config's router_aux_loss_coef, e.g. 0.001 for Mixtral; 0: none). Dense models have no router and ignore it.
    router_aux_loss_coef: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        coef = self.router_aux_loss_coef
        require(coef is None or coef >= 0, "router_aux_loss_coef", f"must be 0 or more (or null), got {coef}")


def sft_step(
    model: torch.nn.Module, batch: dict[str, Any], router_aux_loss_coef: float = 0.0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Summed next-token loss over the batch's label tokens, plus the router's load-balancing loss (weighted by
    ``router_aux_loss_coef``) where a mixture-of-experts model returns one."""
    if "seq_lens" in batch:  # padding-free: logits only where there is a label
        logits, targets, _ = label_logits(model, batch)
        return step_result(label_cross_entropy(logits, targets), batch)
    logits, aux_loss = causal_lm_forward(model, model_inputs(batch, model))
    loss = token_cross_entropy(logits, batch["labels"])
    if aux_loss is not None and router_aux_loss_coef:
        loss = with_router_aux_loss(loss, aux_loss, router_aux_loss_coef)
    return step_result(loss, batch)


def run(
    config: SFTConfig,
    synthetic_rows: synthetic.Generator = synthetic.sft_examples,
    recipe: str = "sft",
    about: str | None = None,
) -> RunResult:
    """Train per ``config``; ``synthetic_rows(n, seed, split)`` supplies the data when data.path is "synthetic".
    ``recipe`` and ``about`` (what it does) name the recipe in the model card: pretrain runs this one too."""
    check_adapter_use(config.model, packing=config.data.packing)
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    examples, eval_examples, stats = load_sft_data(config.data, tokenizer, config.seed, synthetic_rows)
    data_lines = [f"data ({name}): {stat.summary()}" for name, stat in stats.items()]
    for line in data_lines:
        say(line)
    pad = tokenizer.pad_token_id
    multiple = config.train.pad_to_multiple_of
    if config.data.packing:
        items: list[Any] = pack_examples(examples, config.data.max_length)
        eval_items: list[Any] = pack_examples(eval_examples, config.data.max_length) if eval_examples else []
        collate = partial(collate_packed, pad_id=pad, pad_to_multiple_of=multiple)
        data_lines.append(
            f"packing: {len(examples)} examples into {len(items)} rows of at most {config.data.max_length} tokens"
        )
        say(data_lines[-1])
    else:
        items, eval_items = examples, eval_examples
        collate = partial(collate_examples, pad_id=pad, pad_to_multiple_of=multiple)

    model = load_model(config.model)
    aux_coef = use_router_aux_loss(model, config.router_aux_loss_coef)
    model = apply_adapter(model, config.model.adapter, gradient_checkpointing=config.model.gradient_checkpointing)
    say(f"model: {config.model.path}, {trained_summary(model)}")
    if aux_coef:
        say(f"router load-balancing loss: weight {aux_coef} (router_aux_loss_coef)")
    paths = use_fast_paths(model, config)
    if paths.uses("padding-free"):
        # Same examples per batch, same loss; no padding, and each example's attention stays its own.
        collate = collate_padding_free
    step = partial(sft_step, router_aux_loss_coef=aux_coef)
    micro = config.train.micro_batch_size
    spec = run_spec(
        config,
        output_dir,
        resume_from,
        card=RecipeCard(recipe, about or __doc__ or recipe, data_lines),
        items=items,
        collate=collate,
        eval_items=eval_items,
        # A mixture's held-out loss per source, eval/<source>/loss, beside the overall eval/loss.
        evaluate=source_losses(eval_examples, partial(collate_examples, pad_id=pad), step, micro),
        save_final=final_saver(tokenizer),
    )
    result = train(spec, model, step)
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(SFTConfig, argv, "sft", __doc__))


if __name__ == "__main__":
    run_command(main)
