"""Padding-free batches: the examples of a batch laid end to end in one row, each attending only to itself.

A padding-free batch is ``input_ids`` [1, N] holding every real token of the batch, ``position_ids`` [1, N] that
restart at 0 in every example, and ``segments``: one tuple per example, summing to N. No token is padding, and
attention costs what each example alone costs (sum of L_i^2, not N^2), which is what packing alone cannot give.

A segment ``(L,)`` is one example. A segment ``(L0, L1, ..., Lk)`` is a shared prompt of L0 tokens followed by k
continuations of it, each attending to the prompt and to itself but never to the others: chosen and rejected
responses of a preference pair, or the G completions of a GRPO prompt, with their prompt computed once. Each
continuation's position ids go on from the prompt's, so every token sees exactly what it would see in its own row.

transformers lets a model's attention be swapped by name (its ``AttentionInterface``). :func:`enable` switches a
model from ``sdpa`` to the attention here, which is ``sdpa`` itself whenever it is not given ``segments``
(generation, padded batches and every other caller see no difference), and for padding-free batches runs causal
``sdpa`` on each example's slice of the row (on a GPU, one variable-length flash attention call for the whole
batch instead: :mod:`tunekit.fast.flash_varlen`). Masks are built as for ``sdpa``, except that a padding-free
batch gets none: the O(N^2) block-diagonal mask transformers would otherwise build is never needed.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from tunekit.data.segments import Segments  # noqa: F401  (varlen.Segments: the type its attention reads)
from tunekit.fast import flash_varlen, note_once

IMPLEMENTATION = "tunekit_varlen"
# Decoder-only text models whose attention takes the query/key/value layout, position ids and (sliding window)
# masks assumed here; others keep their attention.
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(IMPLEMENTATION, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, _mask)
    _registered = True


def _mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """``sdpa``'s mask, except for unpadded rows of several examples (transformers asks for no causal-skip
    then): :func:`varlen_attention` keeps those examples apart itself, without an O(N^2) mask."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None and not kwargs.get("allow_is_causal_skip", True):
        return None
    return sdpa_mask(*args, **kwargs)


def unsupported(model: torch.nn.Module, on_gpu: bool) -> str | None:
    """Why ``model`` (a transformers model, or a peft / DDP wrapper of one) cannot take padding-free batches, or
    None when it can: LLaMA-style models (MODEL_TYPES) on ``sdpa`` attention, with no adapter that adds tokens
    (prompt and prefix tuning, adaption prompts). On a GPU the per-example loop costs a kernel launch per example
    and layer, so padding-free batches also need torch's flash varlen kernel there (:mod:`.flash_varlen`)."""
    inner = getattr(model, "module", model)
    for config in getattr(inner, "peft_config", {}).values():
        if getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False):
            return "the adapter adds tokens to attention"
    config = getattr(_base(model), "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == IMPLEMENTATION:
        return None
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {', '.join(MODEL_TYPES)}"
    if current != "sdpa":
        return f"the model runs {current!r} attention, not sdpa"
    if on_gpu and not flash_varlen.available():
        return f"on CUDA it needs torch >= 2.10 for flash varlen attention (this is torch {torch.__version__})"
    return None


def enable(model: torch.nn.Module) -> None:
    """Switch ``model`` (one :func:`unsupported` accepts) to the attention here. Idempotent; the choice is not
    saved with the model (``config.json`` keeps no attention implementation)."""
    base = _base(model)
    if base.config._attn_implementation != IMPLEMENTATION:
        _register()
        base.set_attn_implementation(IMPLEMENTATION)


def enabled(model: torch.nn.Module) -> bool:
    """Whether :func:`enable` switched ``model`` (or the model it wraps)."""
    return getattr(getattr(_base(model), "config", None), "_attn_implementation", None) == IMPLEMENTATION


def _base(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


# Kept out of torch.compile graphs (train.compile): the loop over examples would specialise a graph to every batch's
# example lengths.
@torch.compiler.disable
def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    segments: list[tuple[int, ...]] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, H, N, D], key/value [B, KV, N, D] -> ([B, N, H, D], None).

    Each example gets its own attention (with the model's sliding window, if it has one) when the row's examples
    are known: from ``segments`` (B == 1, any mask ignored), or, with no mask, from ``position_ids`` that restart
    inside a row (as transformers' ``sdpa`` reads packed rows). Anything else is transformers' ``sdpa`` unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = None
    if query.shape[2] == key.shape[2] > 1:
        if segments is not None and query.shape[0] == 1:
            # The segments say everything (a padding-free row has no padding; windows are applied below).
            rows = [[tuple(int(n) for n in segment) for segment in segments]]
        elif attention_mask is None:
            rows = _packed_rows(kwargs.get("position_ids"), query.shape[0])
    if rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    dropout = dropout if module.training else 0.0
    window = kwargs.get("sliding_window")
    if dropout == 0.0 and flash_varlen.usable(query):
        flat = flash_varlen.attention(query, key, value, rows, scaling, window)
        if flat is not None:
            return flat, None
    if query.is_cuda:
        note_once(
            "padding-free",
            "flash varlen attention needs bf16 or fp16 compute, no attention dropout, a head size of at most 256 "
            "divisible by 8 and a window the kernel takes; these forwards run attention example by example",
        )
    out_rows = []
    per_row = zip(rows, query.split(1), key.split(1), value.split(1), strict=True)
    for row_segments, query_row, key_row, value_row in per_row:
        lengths = [sum(segment) for segment in row_segments]
        if sum(lengths) != query.shape[2]:
            raise ValueError(f"segments hold {sum(lengths)} tokens but the row holds {query.shape[2]}")
        # split, not slicing: its backward is one concatenation, where each slice's backward would write its
        # gradient into a zero tensor the size of the whole row.
        pieces = [
            _segment_attention(q, k, v, segment, dropout, scaling, window)
            for q, k, v, segment in zip(
                query_row.split(lengths, dim=2),
                key_row.split(lengths, dim=2),
                value_row.split(lengths, dim=2),
                row_segments,
                strict=True,
            )
        ]
        out_rows.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2))
    out = out_rows[0] if len(out_rows) == 1 else torch.cat(out_rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


def _segment_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment: tuple[int, ...],
    dropout: float,
    scaling: float | None,
    window: int | None,
) -> torch.Tensor:
    """Attention of one segment: [1, H, L, D] queries over [1, KV, L, D] keys and values."""
    if len(segment) == 1 and (window is None or segment[0] <= window):
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=True
        )
    mask = allowed(segment, window, q.device)
    repeat = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)


@functools.lru_cache(maxsize=256)
def allowed(segment: tuple[int, ...], window: int | None, device: torch.device) -> torch.Tensor:
    """[L, L] bool: token i may attend token j. Causal; a continuation sees the prompt and itself only; and with
    a sliding window, only keys fewer than ``window`` positions back."""
    prompt, *branches = segment
    branch = torch.cat(
        [torch.zeros(prompt, dtype=torch.long)] + [torch.full((n,), b + 1) for b, n in enumerate(branches)]
    )
    position = torch.cat([torch.arange(prompt)] + [prompt + torch.arange(n) for n in branches])
    index = torch.arange(len(branch))
    allowed = (index[None, :] <= index[:, None]) & ((branch[None, :] == 0) | (branch[None, :] == branch[:, None]))
    if window is not None:
        allowed &= position[:, None] - position[None, :] < window
    return allowed.to(device)


def _packed_rows(position_ids: torch.Tensor | None, batch: int) -> list[list[tuple[int, ...]]] | None:
    """Example lengths per row where position ids restart inside a row ([B, N] or [1, N]); None if none do."""
    if position_ids is None:
        return None
    position_ids = position_ids.expand(batch, -1)
    restarts = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not bool(restarts.any()):
        return None
    width = position_ids.shape[1]
    rows = []
    for row in restarts.cpu():
        starts = [0] + (row.nonzero().flatten() + 1).tolist() + [width]
        rows.append([(b - a,) for a, b in zip(starts[:-1], starts[1:], strict=True)])
    return rows
