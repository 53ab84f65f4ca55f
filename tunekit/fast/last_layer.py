"""The last decoder layer of a padding-free training forward, computed only at the rows whose logits are used.

A training forward needs logits only where there is a label (:func:`tunekit.models.logprobs.logits_at`): the
completion tokens, not the prompt's or the padding's. Every layer but the last must still run at every token,
because later tokens read its keys and values. The last layer's keys and values are needed at every token too,
but its query projection, attention, output projection and MLP only at the rows whose logits are kept: most of
the layer's weights, skipped at every token without a label, in the forward and the backward. A CPU path: on a
GPU the whole layer keeps its one-call flash varlen attention.

:func:`install` wraps the last layer of a LLaMA, Mistral or Qwen2 model; the wrapped layer runs as before unless
the forward is given ``keep_rows`` [U] (sorted, distinct flat indices into the padding-free row), and then returns
the hidden states of those rows only, [1, U, hidden]. The model's final norm and output head then run on those
rows, and ``logits_to_keep`` indexes into them. Each kept row attends exactly as in the full layer: to the earlier
tokens of its own example, and to a shared prompt where the segment has one (:mod:`tunekit.fast.varlen`).
"""

from __future__ import annotations

import bisect
import sys
import types
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from tunekit.fast import varlen

KEEP_ROWS = "keep_rows"
# Decoder layers laid out as norm -> attention (q, k, v, o with rotate-half rotary, no q/k norms) -> residual ->
# norm -> MLP -> residual; others keep computing every row.
_MODEL_TYPES = ("llama", "mistral", "qwen2")
_MARK = "tunekit_trims_last_layer"


def unsupported(model: torch.nn.Module) -> str | None:
    """Why the last layer of ``model`` (a transformers model or a peft / DDP wrapper of one) cannot be trimmed, or
    None when it can."""
    base = _base_model(model)
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    layers = getattr(getattr(base, "model", None), "layers", None)
    if model_type not in _MODEL_TYPES or not layers:
        return f"model type {model_type!r} is not one of {', '.join(_MODEL_TYPES)}"
    layer = layers[-1]
    attention = getattr(layer, "self_attn", None)
    parts = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
    if attention is None or _rotate_half(layer) is None or not all(hasattr(attention, p) for p in parts):
        return f"{type(layer).__name__} is not laid out as LLaMA's decoder layer"
    if hasattr(attention, "q_norm") or not all(
        hasattr(layer, p) for p in ("input_layernorm", "mlp", "post_attention_layernorm")
    ):
        return f"{type(layer).__name__} is not laid out as LLaMA's decoder layer"
    return None


def install(model: torch.nn.Module) -> None:
    """Wrap the last decoder layer of ``model`` (one :func:`unsupported` accepts) so that it honours
    ``keep_rows``. Idempotent; the weights and the module tree are unchanged."""
    layer = _base_model(model).model.layers[-1]
    if not getattr(layer, _MARK, False):
        layer.forward = types.MethodType(_keeping_rows, layer)
        setattr(layer, _MARK, True)


def _rotate_half(layer: torch.nn.Module) -> Callable | None:
    """The rotary helper of the layer's own modeling module (transformers keeps one per architecture)."""
    return getattr(sys.modules[type(layer).__module__], "rotate_half", None)


def installed(model: torch.nn.Module) -> bool:
    """Whether :func:`install` wrapped the last layer of ``model``."""
    layers = getattr(getattr(_base_model(model), "model", None), "layers", None)
    return bool(layers) and getattr(layers[-1], _MARK, False)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def _keeping_rows(layer: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """The wrapped layer's forward, bound to it as a method, so that a deep copy of the model (a frozen reference
    policy) gets a forward of its own copy rather than one that still runs this layer."""
    # get, not pop: under train.compile this wrapper is traced inside the compiled block, and dynamo fails on a
    # mutated kwargs dict (a KeyError for the next keyword). Only logits_at passes the key, and only when set.
    keep = kwargs.get(KEEP_ROWS)
    if keep is None:
        return type(layer).forward(layer, hidden_states, *args, **kwargs)
    run = partial(
        _kept_rows_forward,
        layer,
        keep=keep,
        segments=kwargs["segments"],
        position_embeddings=kwargs["position_embeddings"],
        rotate_half=_rotate_half(layer),
    )
    if getattr(layer, "gradient_checkpointing", False) and layer.training:
        return layer._gradient_checkpointing_func(run, hidden_states)
    return run(hidden_states)


def _kept_rows_forward(
    layer: torch.nn.Module,
    hidden: torch.Tensor,
    keep: torch.Tensor,
    segments: varlen.Segments,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    rotate_half: Callable,
) -> torch.Tensor:
    """hidden [1, N, H] -> the layer's output at rows ``keep`` [U]: [1, U, H]."""
    attention = layer.self_attn
    rows, head_dim = hidden.shape[1], attention.head_dim
    normed = layer.input_layernorm(hidden)
    kept = normed.index_select(1, keep)
    query = attention.q_proj(kept).view(1, len(keep), -1, head_dim).transpose(1, 2)
    key = attention.k_proj(normed).view(1, rows, -1, head_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(1, rows, -1, head_dim).transpose(1, 2)
    cos, sin = position_embeddings  # [1, N, head_dim]
    cos_kept, sin_kept = cos.index_select(1, keep).unsqueeze(1), sin.index_select(1, keep).unsqueeze(1)
    query = query * cos_kept + rotate_half(query) * sin_kept
    key = key * cos.unsqueeze(1) + rotate_half(key) * sin.unsqueeze(1)
    dropout = attention.attention_dropout if attention.training else 0.0
    # Qwen2 sets a window per layer; Mistral's is its config's.
    window = getattr(attention, "sliding_window", getattr(attention.config, "sliding_window", None))
    mixed = _kept_rows_attention(query, key, value, keep, segments, attention.scaling, dropout, window)
    residual = hidden.index_select(1, keep) + attention.o_proj(mixed)
    return residual + layer.mlp(layer.post_attention_layernorm(residual))


# The loop over examples stays out of torch.compile graphs (train.compile), as in tunekit.fast.varlen.
@torch.compiler.disable
def _kept_rows_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    keep: torch.Tensor,
    segments: varlen.Segments,
    scaling: float,
    dropout: float,
    window: int | None,
) -> torch.Tensor:
    """query [1, heads, U, D] at rows ``keep``, key / value [1, kv_heads, N, D] -> [1, U, heads * D]."""
    kept = keep.tolist()
    repeat = query.shape[1] // key.shape[1]
    pieces = []
    start = 0
    for segment in segments:
        segment = tuple(int(n) for n in segment)
        end = start + sum(segment)
        first, last = bisect.bisect_left(kept, start), bisect.bisect_left(kept, end)
        if last > first:
            local = torch.tensor(kept[first:last], device=keep.device) - start
            allowed = varlen.allowed(segment, window, keep.device).index_select(0, local)  # [queries, L]
            pieces.append(
                F.scaled_dot_product_attention(
                    query[:, :, first:last],
                    key[:, :, start:end].repeat_interleave(repeat, dim=1),
                    value[:, :, start:end].repeat_interleave(repeat, dim=1),
                    attn_mask=allowed,
                    dropout_p=dropout,
                    scale=scaling,
                )
            )
        start = end
    if start != key.shape[2]:
        raise ValueError(f"segments hold {start} tokens but the row holds {key.shape[2]}")
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
    return out.transpose(1, 2).reshape(1, len(kept), -1)
