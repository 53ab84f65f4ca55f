"""Log-probabilities of given tokens under a causal LM, for preference and RL losses.

Where the model allows it (see :mod:`tunekit.fast.varlen`), a padded batch is run padding-free: its real tokens
end to end in one row, and the output head only at the positions whose next token is a label. Results are the
same [B, T-1] tensors either way; padding and prompt positions just cost nothing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from tunekit.fast import last_layer, note_once, varlen
from tunekit.losses.reduce import label_log_softmax, selective_log_softmax
from tunekit.losses.sft import IGNORE_INDEX


def causal_lm_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(**inputs).logits`` for exactly the [B, T] input positions: [B, T, V].

    peft's prompt tuning runs the model on its virtual tokens followed by the inputs, and returns the logits of
    both ([B, n + T, V]); the first n rows belong to the virtual tokens, which have no labels, so they are dropped.
    """
    return causal_lm_forward(model, inputs)[0]


def causal_lm_forward(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`causal_lm_logits` [B, T, V] and the router's load-balancing loss [] that a mixture-of-experts model
    returns when its config asks for router logits (None otherwise)."""
    outputs = model(**inputs)
    width = inputs["input_ids"].shape[1]
    return outputs.logits[:, outputs.logits.shape[1] - width :], getattr(outputs, "aux_loss", None)


def label_logits(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padding-free batch (``input_ids``, ``labels``, ``position_ids`` [1, N], ``seq_lens`` [n]; see
    :func:`tunekit.data.collate.collate_padding_free`) -> ``(logits [K, V], targets [K], positions [K])`` at the K
    positions t whose next token labels[t + 1] is a label."""
    labels = batch["labels"][0]
    positions = (labels[1:] != IGNORE_INDEX).nonzero().flatten()
    segments = [(int(n),) for n in batch["seq_lens"].tolist()]
    logits = logits_at(model, batch["input_ids"], batch["position_ids"], segments, positions)
    return logits, labels[positions + 1], positions


def logits_at(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    segments: list[tuple[int, ...]],
    positions: torch.Tensor,
) -> torch.Tensor:
    """Logits [K, V] of a padding-free row (``input_ids``, ``position_ids`` [1, N]) at ``positions`` [K] only.

    The output head runs on those K positions alone (transformers' ``logits_to_keep``), so neither padding nor
    prompt positions ever get a [V]-wide row of logits; on the CPU, so do the last layer's query, attention output
    and MLP (:mod:`tunekit.fast.last_layer`).
    """
    # No KV cache: a training forward never reuses one.
    inputs = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segments": varlen.Segments(segments),
        "use_cache": False,
    }
    if _takes_logits_to_keep(model):
        # With the trimmed-last-layer fast path (a CPU path) the last layer runs at the needed rows only. Each
        # needed row is computed once (a shared prompt's last token may predict several labels), and the output
        # head picks them up in the order asked for.
        if last_layer.installed(model) and positions.numel():
            rows, order = torch.unique(positions, sorted=True, return_inverse=True)
            inputs[last_layer.KEEP_ROWS] = rows
            positions = order
        # squeeze, not [0]: indexing's backward would write the gradient into a zero tensor of the same size.
        return model(**inputs, logits_to_keep=positions).logits.squeeze(0)
    return model(**inputs).logits[0, positions]


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    inner = getattr(model, "module", model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


@dataclass
class PaddingFreeView:
    """A padded batch [B, T] rearranged into one padding-free row of N tokens, with its labels located."""

    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]
    segments: list[tuple[int, ...]]  # see tunekit.fast.varlen
    positions: torch.Tensor  # [K] flat index of the token that predicts each label
    targets: torch.Tensor  # [K] the label
    at: tuple[torch.Tensor, torch.Tensor]  # ([K], [K]) where each label's log-prob goes in a [B, T - 1] result


def padding_free_view(batch: dict[str, Any]) -> PaddingFreeView | None:
    """``batch`` (``input_ids``, ``attention_mask``, ``labels`` [B, T], optional ``position_ids``) laid out
    padding-free; None unless every row's real tokens are contiguous and some token has a label.

    Rows whose prompts (their tokens before the first label) are identical share one copy of the prompt: the
    chosen and rejected rows of a preference pair, the completions of one GRPO prompt. Rows with no label are
    left out: nothing of theirs is needed.
    """
    if batch.get("attention_mask") is None or batch["attention_mask"].dim() != 2 or "labels" not in batch:
        return None
    device = batch["input_ids"].device
    mask = batch["attention_mask"].bool().cpu()
    positions = batch.get("position_ids")
    positions = (mask.long().cumsum(-1) - 1) if positions is None else positions.cpu()
    ids, labels = batch["input_ids"].cpu(), batch["labels"].cpu()
    # A label counts when the token before it is a real token of its row.
    has_label = (labels[:, 1:] != IGNORE_INDEX) & mask[:, 1:] & mask[:, :-1]
    if not bool(has_label.any()):
        return None
    groups: dict[tuple, list[tuple[int, int, int]]] = {}  # prompt -> (row, first column, first label column)
    for row in range(ids.shape[0]):
        real = mask[row].nonzero().flatten()
        labelled = has_label[row].nonzero().flatten()
        if len(labelled) == 0:
            continue
        first, last = int(real[0]), int(real[-1])
        if last - first + 1 != len(real):
            note_once("padding-free", "a batch with padding inside a row runs padded")
            return None
        split = int(labelled[0]) + 1  # the first label's column; the prompt is [first, split)
        key = (tuple(ids[row, first:split].tolist()), tuple(positions[row, first:split].tolist()))
        groups.setdefault(key, []).append((row, first, split))
    flat_index = torch.full(ids.shape, -1, dtype=torch.long)
    source_rows: list[int] = []
    source_cols: list[int] = []
    segments: list[tuple[int, ...]] = []
    for members in groups.values():
        shared = len(members) > 1
        lengths = []
        if shared:  # the prompt once (rows may be padded differently: each maps its own columns to it)
            row0, first0, split0 = members[0]
            _place(flat_index, source_rows, source_cols, [(r, f) for r, f, _ in members], row0, first0, split0 - first0)
            lengths.append(split0 - first0)
        for row, first, split in members:
            start = split if shared else first
            end = int(mask[row].nonzero().flatten()[-1]) + 1
            _place(flat_index, source_rows, source_cols, [(row, start)], row, start, end - start)
            lengths.append(end - start)
        segments.append(tuple(lengths))
    rows, cols = has_label.nonzero(as_tuple=True)  # label at column cols + 1, predicted from column cols
    rows_t, cols_t = torch.tensor(source_rows), torch.tensor(source_cols)
    return PaddingFreeView(
        input_ids=ids[rows_t, cols_t][None].to(device),
        position_ids=positions[rows_t, cols_t][None].to(device),
        segments=segments,
        positions=flat_index[rows, cols].to(device),
        targets=labels[rows, cols + 1].to(device),
        at=(rows.to(device), cols.to(device)),
    )


def _place(
    flat_index: torch.Tensor,
    source_rows: list[int],
    source_cols: list[int],
    readers: list[tuple[int, int]],
    source: int,
    start: int,
    length: int,
) -> None:
    """Append ``length`` tokens of row ``source`` from column ``start`` to the flat row; each (row, column) of
    ``readers`` maps its own ``length`` columns from that column on to them."""
    offset = len(source_cols)
    for row, column in readers:
        flat_index[row, column : column + length] = torch.arange(offset, offset + length)
    source_rows.extend([source] * length)
    source_cols.extend(range(start, start + length))


def token_logps(
    model: torch.nn.Module, batch: dict[str, Any], entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of ``batch["labels"]`` and the mask of positions that have a label.

    Returns ``(logps [B, T-1], mask [B, T-1])``: position t holds log p(labels[t+1] | tokens <= t); masked
    positions hold 0. Only the chosen tokens' log-probs are gathered, never a full-vocabulary log-softmax. With
    ``entropy``, also the entropy of each position's next-token distribution [B, T-1] (no gradient).
    """
    view = padding_free_view(batch) if varlen.enabled(model) else None
    if view is None:
        return _padded_token_logps(model, batch, entropy)
    logits = logits_at(model, view.input_ids, view.position_ids, view.segments, view.positions)
    shape = (batch["labels"].shape[0], batch["labels"].shape[1] - 1)
    picked = label_log_softmax(logits, view.targets)
    logps = picked.new_zeros(shape).index_put(view.at, picked)
    mask = torch.zeros(shape, dtype=torch.bool, device=picked.device).index_put(
        view.at, torch.ones_like(view.targets, dtype=torch.bool)
    )
    if not entropy:
        return logps, mask
    with torch.no_grad():
        values = torch.cat([_entropy(chunk) for chunk in logits.split(4096)])
        entropies = picked.new_zeros(shape).index_put(view.at, values)
    return logps, mask, entropies


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """[K, V] -> [K] entropy of each row's softmax, in fp32."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def _padded_token_logps(
    model: torch.nn.Module, batch: dict[str, Any], entropy: bool
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`token_logps` on the padded batch as it is (models or batches padding-free does not suit)."""
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
