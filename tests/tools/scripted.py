"""A policy with a script for tests: the tiny model samples as usual, but in the first turn of every other row its
sampled tokens are replaced by a calculator call on the prompt's question (or by ``FIRST_TURNS[row % len]`` when a
test sets them), so tool calls happen without a trained model. Later turns are the model's own samples.

Run as a script under torchrun, it runs the GRPO recipe with the script in place (two-process tests)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from tunekit.rl import tool_rollout

# A tiny LoRA run of an RL recipe on the generated tool task: 8 prompts, 2 a step, 2 completions of 6 tokens each.
TINY_TOOL_RUN = [
    "model.path=tiny-llama",
    "model.adapter.method=lora",
    "train.progress=false",
    "data.path=synthetic:big-arithmetic-tools",
    "data.synthetic_size=8",
    "data.max_eval_examples=2",
    "train.micro_batch_size=2",
    "sampling.num_generations=2",
    "sampling.max_new_tokens=6",
]
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "%s"}}</tool_call>'
FIRST_TURNS: list[str | None] = []  # per row (cycled): the first turn's text, None for the model's own


def scripted(real):
    """``real`` (tunekit.rl.rollout.generate_turn) with the first turns rewritten. It returns no KV context: the cache
    holds what the model sampled, not the script, so later turns read their whole context."""

    def generate(model, tokenizer, prompts, sampling, past=None, keep_context=False):
        assert past is None
        out, _ = real(model, tokenizer, prompts, sampling)
        labels, texts, truncated = [], [], out.truncated.clone()
        for k in range(len(out.completions)):
            prompt = prompts[k // sampling.num_generations]
            context = tokenizer.decode(prompt.prompt_ids, skip_special_tokens=False)
            text = _first_turn(k, context) if "<|tool|>" not in context else None
            if text is None:
                labels.append(out.labels[k])
                texts.append(out.completions[k])
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            labels.append(torch.tensor(ids))
            texts.append(text)
            truncated[k] = False  # a scripted turn ends with its EOS
        return SimpleNamespace(labels=labels, completions=texts, truncated=truncated), None

    return generate


def _first_turn(k: int, context: str) -> str | None:
    if FIRST_TURNS:
        return FIRST_TURNS[k % len(FIRST_TURNS)]
    if k % 2:
        return None
    question = re.findall(r"What is (.+?)\?", context)
    return CALL % question[-1] if question else None


def install() -> None:
    tool_rollout.generate_turn = scripted(tool_rollout.generate_turn)


if __name__ == "__main__":
    install()
    from tunekit.recipes.common import run_command
    from tunekit.recipes.grpo import main

    run_command(main)
