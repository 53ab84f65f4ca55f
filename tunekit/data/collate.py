"""Batches of examples -> padded tensors, for single examples per row or packed rows.

A batch is a dict of tensors:

- ``input_ids`` [B, T], ``labels`` [B, T] (IGNORE_INDEX on padding and untrained tokens),
- ``attention_mask``: [B, T] (1 = real token) for unpacked batches, or for packed batches a boolean
  [B, 1, T, T] block-diagonal causal mask (True = may attend) with ``position_ids`` [B, T] restarting at 0
  in every example,
- ``num_items``: the number of label tokens, which the runner uses to normalise the loss over a whole
  accumulated step; ``num_tokens``: real (non-padding) tokens, for throughput; ``example_ids``: source rows.

A padding-free batch (:func:`collate_padding_free`) has no padding at all: one row [1, N] of every example end
to end, ``position_ids`` restarting per example and ``seq_lens`` [n], for models switched to
:mod:`tunekit.fast.varlen` attention, which keeps each example to itself (:class:`~tunekit.data.segments.Segments`).

Position ids alone do not isolate packed examples in transformers' attention on the CPU; the explicit 4D mask
does, and gives the same logits as running each example on its own.
"""

from __future__ import annotations

from typing import Any

import torch

from tunekit.data.segments import Segments
from tunekit.data.sft import IGNORE_INDEX, Example


def collate_examples(examples: list[Example], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """One example per row, right-padded to the longest in the batch."""
    width = _round_up(max(len(e.input_ids) for e in examples), pad_to_multiple_of)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for b, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[b, :n] = torch.tensor(example.input_ids)
        labels[b, :n] = torch.tensor(example.labels)
        attention_mask[b, :n] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "num_items": (labels != IGNORE_INDEX).sum(),
        "num_tokens": attention_mask.sum(),
        "example_ids": torch.tensor([e.index for e in examples]),
    }


def collate_packed(rows: list[list[Example]], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Several examples per row; each attends only within itself, with position ids restarting at 0."""
    width = _round_up(max(sum(len(e.input_ids) for e in row) for row in rows), pad_to_multiple_of)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    # Which example each token belongs to (-1: padding).
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for s, example in enumerate(row):
            n = len(example.input_ids)
            input_ids[b, start : start + n] = torch.tensor(example.input_ids)
            labels[b, start : start + n] = torch.tensor(example.labels)
            position_ids[b, start : start + n] = torch.arange(n)
            segment[b, start : start + n] = s
            start += n
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": block_causal_mask(segment),
        "num_items": (labels != IGNORE_INDEX).sum(),
        "num_tokens": (segment >= 0).sum(),
        "example_ids": torch.tensor([e.index for row in rows for e in row]),
    }


def collate_padding_free(items: list[Example] | list[list[Example]]) -> dict[str, torch.Tensor]:
    """Examples (or packed rows of them, flattened) end to end in one row: ``input_ids``, ``labels`` and
    ``position_ids`` [1, N] with N the real tokens of the batch, ``seq_lens`` [n] the examples' lengths.

    Each example's first label is ignored, so that no example is trained to predict from the one before it.
    """
    examples = [e for item in items for e in (item if isinstance(item, list) else [item])]
    lengths = [len(e.input_ids) for e in examples]
    input_ids = torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.long)[None]
    labels = torch.tensor([t for e in examples for t in e.labels], dtype=torch.long)[None]
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    labels[0, starts] = IGNORE_INDEX
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
        "seq_lens": torch.tensor(lengths),
        "num_items": (labels != IGNORE_INDEX).sum(),
        "num_tokens": torch.tensor(sum(lengths)),
        "example_ids": torch.tensor([e.index for e in examples]),
    }


def block_causal_mask(segment: torch.Tensor) -> torch.Tensor:
    """[B, T] segment ids (-1 = padding) -> [B, 1, T, T] bool mask: attend to earlier tokens of the same segment.

    Padding positions attend to themselves only, so that no attention row is empty (an empty row gives NaN,
    and NaN can leak into gradients even where the loss ignores it).
    """
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    mask = same & causal & (segment[:, None, :] >= 0)
    mask |= torch.eye(width, dtype=torch.bool)
    return mask[:, None]


def model_inputs(batch: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """The keys of ``batch`` that the model's forward takes, with a 4D mask in the form its attention expects.

    sdpa takes the boolean mask as it is; eager attention adds the mask to its scores, so it gets 0 / -inf.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if "seq_lens" in batch:  # padding-free: one example per segment (see tunekit.fast.varlen)
        inputs["segments"] = Segments([(int(n),) for n in batch["seq_lens"].tolist()])
        return inputs
    mask = inputs["attention_mask"]
    if mask.dim() == 4:
        config = getattr(model, "config", None)
        if getattr(config, "_attn_implementation", "sdpa") == "eager":
            dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
            inputs["attention_mask"] = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return inputs


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors moved to ``device``; other values (lists, ids, strings) as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate_pairs(
    pairs: list[Any], pad_id: int, pad_to_multiple_of: int = 1, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Preference pairs -> one batch of 2B sequences: rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected.

    ``labels`` [2B, T] hold the response tokens (IGNORE_INDEX on prompt and padding); ``position_ids`` count real
    tokens only, so that left and right padding give the same outputs; ``margin`` [B]; ``num_items`` = B pairs;
    ``ref_logps`` [B, 2] when every pair carries precomputed reference log-probs.
    """
    sequences = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    prompt_lengths = [len(p.prompt_ids) for p in pairs] * 2
    width = _round_up(max(len(s) for s in sequences), pad_to_multiple_of)
    rows = len(sequences)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for b, (seq, n_prompt) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        start = 0 if padding_side == "right" else width - len(seq)
        span = slice(start, start + len(seq))
        input_ids[b, span] = torch.tensor(seq)
        attention_mask[b, span] = 1
        labels[b, start + n_prompt : start + len(seq)] = torch.tensor(seq[n_prompt:])
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "labels": labels,
        "margin": torch.tensor([p.margin for p in pairs], dtype=torch.float32),
        "num_items": torch.tensor(len(pairs)),
        "num_tokens": attention_mask.sum(),
        "example_ids": torch.tensor([p.index for p in pairs]),
    }
    if all(getattr(p, "ref_logps", None) is not None for p in pairs):
        batch["ref_logps"] = torch.tensor([p.ref_logps for p in pairs], dtype=torch.float32)  # [B, 2]
    return batch
