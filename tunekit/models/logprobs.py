"""Log-probabilities of given tokens under a causal LM, for preference and RL losses."""

from __future__ import annotations

from typing import Any

import torch

from tunekit.losses.reduce import selective_log_softmax
from tunekit.losses.sft import IGNORE_INDEX


def causal_lm_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(**inputs).logits`` for exactly the [B, T] input positions: [B, T, V].

    peft's prompt tuning runs the model on its virtual tokens followed by the inputs, and returns the logits of
    both ([B, n + T, V]); the first n rows belong to the virtual tokens, which have no labels, so they are dropped.
    """
    logits = model(**inputs).logits
    width = inputs["input_ids"].shape[1]
    return logits[:, logits.shape[1] - width :]


def token_logps(
    model: torch.nn.Module, batch: dict[str, Any], entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of ``batch["labels"]`` and the mask of positions that have a label.

    Returns ``(logps [B, T-1], mask [B, T-1])``: position t holds log p(labels[t+1] | tokens <= t); masked
    positions hold 0. Only the chosen tokens' log-probs are gathered, never a full-vocabulary log-softmax. With
    ``entropy``, also the entropy of each position's next-token distribution [B, T-1] (no gradient), computed
    one row at a time.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = causal_lm_logits(model, inputs)[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    logps = selective_log_softmax(logits, labels.clamp(min=0))
    if not entropy:
        return logps * mask, mask
    with torch.no_grad():
        rows = []
        for row in logits:
            log_p = torch.log_softmax(row.float(), dim=-1)
            rows.append(-(log_p.exp() * log_p).sum(-1))
        entropies = torch.stack(rows) * mask
    return logps * mask, mask, entropies


def sequence_logps(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed log-probs [B], label-token counts [B])`` of each row's labelled tokens."""
    logps, mask = token_logps(model, batch)
    return logps.sum(-1), mask.sum(-1)
