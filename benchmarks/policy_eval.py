"""One held-out evaluator for any causal-LM policy directory, independent of tunekit's own decoding.

A policy is loaded with plain transformers (and peft, when the directory holds an adapter), and its completions
come from ``model.generate``, not from tunekit's rollout loop: the point is to check what a trainer produced with
code that trainer never ran. For each held-out prompt (its exact token ids, left-padded into batches) it draws
K samples at the given temperature / top-k / top-p under a fixed torch seed, and one greedy answer, each stopping
at an end token or after ``max_new_tokens``. Completions are decoded without special tokens and scored by a checker
with the reward-function contract ``checker(prompts=, completions=, **columns) -> list[float]`` (1.0 = correct).

Every policy is scored under the same seed and batch shapes, so they draw the same random numbers: differences
between policies then come from the policies, not from the luck of the draw.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Decoding:
    """How completions are drawn: ``samples`` per prompt at ``temperature`` (0: the samples are greedy too)."""

    samples: int
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    seed: int = 0
    batch_prompts: int = 16  # prompts per generate call


@dataclass
class PolicyScore:
    sampled_accuracy: float  # mean checker score over every sample of every prompt
    greedy_accuracy: float  # mean checker score of the greedy answers
    # Standard errors over prompts (each prompt's mean score is one observation; its samples are not independent).
    sampled_se: float
    greedy_se: float
    mean_completion_tokens: float  # of the samples, each counted through its end token (as both trainers count)
    greedy_mean_completion_tokens: float
    prompts: int
    samples_per_prompt: int
    truncated_fraction: float  # samples that reached max_new_tokens without an end token
    # Exact KL(policy || reference) of the next-token distributions, averaged over the tokens of the policy's own
    # samples: how far training moved the policy from where it started (None: no reference given).
    kl_to_reference: float | None
    examples: list[dict[str, Any]]  # the first prompts' greedy answers, to read by eye


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32, attn: str = "sdpa") -> torch.nn.Module:
    """A model directory as a plain causal LM: full weights as they are, a PEFT adapter merged into its recorded
    base (``base_model_name_or_path``, which may itself be an adapter directory)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    adapter = path / "adapter_config.json"
    if not adapter.is_file():
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=attn)
    from peft import PeftModel

    base = load_policy(json.loads(adapter.read_text())["base_model_name_or_path"], dtype, attn)
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()


def end_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS and every EOS the checkpoint's generation config lists."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    return list(dict.fromkeys(i for i in ids if i is not None))


@torch.no_grad()
def generate(
    model: torch.nn.Module, tokenizer: Any, prompt_ids: Sequence[list[int]], n: int, sample: bool, decoding: Decoding
) -> list[list[list[int]]]:
    """[P] prompt ids -> [P][n] completion ids, each cut after its first end token."""
    from transformers import GenerationConfig

    ends = end_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ends[0]
    # Every field set: generate fills unset ones from global defaults (e.g. top_k=50), which would change the policy.
    settings: dict[str, Any] = {
        "do_sample": sample,
        "num_return_sequences": n,
        "max_new_tokens": decoding.max_new_tokens,
    }
    if sample:
        settings.update(temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p)
    config = GenerationConfig(**settings, eos_token_id=ends, pad_token_id=pad, repetition_penalty=1.0)
    # generate would fill the fields left unset from the checkpoint's generation_config.json (a repetition penalty,
    # a minimum length...): the policy is scored on its own distribution, so that file is set aside.
    model.generation_config = GenerationConfig(eos_token_id=ends, pad_token_id=pad)
    model.eval()
    out: list[list[list[int]]] = []
    for start in range(0, len(prompt_ids), decoding.batch_prompts):
        chunk = prompt_ids[start : start + decoding.batch_prompts]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        device = next(model.parameters()).device
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        rows = generated[:, width:].cpu().tolist()
        for p in range(len(chunk)):
            out.append([_cut(row, ends) for row in rows[p * n : (p + 1) * n]])
    return out


def _cut(tokens: list[int], ends: list[int]) -> list[int]:
    """Up to and including the first end token (generate pads finished rows after it)."""
    for i, token in enumerate(tokens):
        if token in ends:
            return tokens[: i + 1]
    return tokens


def score(
    completions: list[list[list[int]]], prompts: Sequence[Any], tokenizer: Any, checker: Callable[..., list[float]]
) -> tuple[list[list[float]], list[list[str]]]:
    """Checker scores and decoded texts, [P][n] each; ``prompts`` are PromptExample-like (prompt, columns)."""
    texts, flat_prompts, columns = [], [], {}
    for prompt, group in zip(prompts, completions, strict=True):
        for ids in group:
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
            flat_prompts.append(prompt.prompt)
            for key, value in prompt.columns.items():
                columns.setdefault(key, []).append(value)
    values = [float(v) for v in checker(prompts=flat_prompts, completions=texts, **columns)]
    n = len(completions[0]) if completions else 0
    return [values[i : i + n] for i in range(0, len(values), n)], [texts[i : i + n] for i in range(0, len(texts), n)]


@torch.no_grad()
def kl_to(
    reference: torch.nn.Module, model: torch.nn.Module, prompt_ids: Sequence[list[int]], completions: Any
) -> float:
    """Mean over the completions' tokens of the exact KL(model || reference) of the next-token distributions.

    completions: [P][n] token ids; each prompt's n completions go through both models as one right-padded batch.
    """
    total, count = 0.0, 0
    for ids, group in zip(prompt_ids, completions, strict=True):
        width = len(ids) + max(len(c) for c in group)
        batch = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for row, c in enumerate(group):
            batch[row, : len(ids) + len(c)] = torch.tensor(ids + c)
            mask[row, : len(ids) + len(c)] = 1
        # Position t predicts token t + 1: the completion's tokens are predicted from len(ids) - 1 on.
        scored = mask[:, len(ids) :].bool()
        logps = [
            m(input_ids=batch, attention_mask=mask).logits[:, len(ids) - 1 : -1].log_softmax(-1)
            for m in (model, reference)
        ]
        kl = (logps[0].exp() * (logps[0] - logps[1])).sum(-1)
        total += kl[scored].sum().item()
        count += int(scored.sum())
    return total / max(count, 1)


def evaluate_policy(
    path: str | Path,
    tokenizer: Any,
    prompts: Sequence[Any],
    checker: Callable[..., list[float]],
    decoding: Decoding,
    reference: torch.nn.Module | None = None,
) -> PolicyScore:
    """Load the policy at ``path`` and score it on ``prompts`` (see the module docstring); with ``reference``
    (e.g. the warm start) also the KL to it."""
    model = load_policy(path)
    ids = [p.prompt_ids for p in prompts]
    sampling = decoding.temperature > 0
    greedy = generate(model, tokenizer, ids, 1, False, decoding)
    torch.manual_seed(decoding.seed)
    # At temperature 0 every "sample" is the greedy answer (generate refuses several greedy sequences per prompt).
    sampled = generate(model, tokenizer, ids, decoding.samples, True, decoding) if sampling else None
    sampled = sampled or [group * decoding.samples for group in greedy]
    sampled_scores, _ = score(sampled, prompts, tokenizer, checker)
    greedy_scores, greedy_texts = score(greedy, prompts, tokenizer, checker)
    ends = end_token_ids(model, tokenizer)
    lengths = [len(c) for group in sampled for c in group]
    truncated = [len(c) == decoding.max_new_tokens and c[-1] not in ends for group in sampled for c in group]
    per_prompt = [_mean(row) for row in sampled_scores]
    return PolicyScore(
        sampled_accuracy=_mean(per_prompt),
        greedy_accuracy=_mean([row[0] for row in greedy_scores]),
        sampled_se=_standard_error(per_prompt),
        greedy_se=_standard_error([row[0] for row in greedy_scores]),
        mean_completion_tokens=_mean(lengths),
        greedy_mean_completion_tokens=_mean([len(group[0]) for group in greedy]),
        prompts=len(prompts),
        samples_per_prompt=decoding.samples,
        truncated_fraction=_mean([float(t) for t in truncated]),
        kl_to_reference=None if reference is None else kl_to(reference.eval(), model, ids, sampled),
        examples=[
            {"prompt": p.prompt, "columns": p.columns, "greedy": texts[0], "correct": row[0]}
            for p, texts, row in list(zip(prompts, greedy_texts, greedy_scores, strict=True))[:3]
        ],
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _standard_error(values: Sequence[float]) -> float:
    if len(values) < 2:
        return float("nan")
    mean = _mean(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5
