"""Token-weighted perplexity: exp of the mean next-token loss over every label token of a data set.

The examples come from :func:`tunekit.data.sft.tokenize_rows` and are batched with the SFT collator, so the
tokens scored are exactly the tokens SFT trains on (completions and assistant turns, not prompts; the whole
text for text rows), and the summed loss is the SFT loss function's. Averaging over tokens rather than examples
gives a long example the weight of its tokens, as a training step does.
"""

from __future__ import annotations

import math

import torch

from tunekit.data.collate import collate_examples, model_inputs
from tunekit.data.sft import Example, TokenizeStats
from tunekit.eval.tasks import TaskResult
from tunekit.losses.sft import token_cross_entropy


@torch.no_grad()
def perplexity(
    model: torch.nn.Module, examples: list[Example], stats: TokenizeStats, pad_id: int, batch_size: int
) -> TaskResult:
    """``perplexity`` = exp(total NLL / label tokens) and ``perplexity/nll`` (the mean NLL in nats per token)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    tokens = 0
    for start in range(0, len(examples), batch_size):
        batch = collate_examples(examples[start : start + batch_size], pad_id)  # input_ids, labels: [B, T]
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**model_inputs(batch, model)).logits  # [B, T, V]
        loss = token_cross_entropy(logits, batch["labels"])
        # Summed in float64 on the host: thousands of batches of fp32 sums would otherwise lose digits.
        total += float(loss.loss_sum)
        tokens += int(loss.num_units)
    model.train(was_training)
    nll = total / tokens
    counts = {
        "examples": len(examples),
        "tokens": tokens,
        "rows": stats.rows,
        "truncated": stats.truncated,
        "dropped": stats.dropped,
        "empty": stats.empty,
    }
    return TaskResult({"perplexity": _exp(nll), "perplexity/nll": nll}, counts)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
