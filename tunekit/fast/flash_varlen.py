"""Padding-free attention on a GPU: one variable-length flash attention call for every example of a batch.

:mod:`tunekit.fast.varlen` keeps the examples of a padding-free batch apart by running attention on each
example's slice. On a CPU that costs nothing extra; on a GPU each slice is a handful of kernel launches per layer,
and a packed batch of a few hundred short examples spends its time launching them. torch's
``torch.nn.attention.varlen.varlen_attn`` (flash attention with cumulative sequence offsets) does the whole batch
in one launch, still at the cost of each example alone.

A segment ``(L0, L1, ..., Lk)`` (a shared prompt and k continuations; see :mod:`tunekit.fast.varlen`) becomes
k + 1 query sequences: the prompt over its own keys, and each continuation over the prompt's keys followed by its
own. Flash attention aligns a causal mask to the last key when there are more keys than queries, so continuation
token t sees the whole prompt and its own tokens up to t, and nothing of the other continuations. The continuations'
keys and values are gathered into that layout (a copy of the prompt's keys per continuation: KV heads only).

Used when the kernel exists (torch >= 2.10 on CUDA), the computation is in bf16 or fp16 (the stored dtype, or
autocast's), there is no attention dropout, and any sliding window can be given to the kernel.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Rows = list[list[tuple[int, ...]]]


@functools.cache
def _kernel() -> tuple[Callable[..., torch.Tensor], frozenset[str]] | None:
    """torch's varlen flash attention and the names of its parameters (they changed between releases)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def available() -> bool:
    """Whether this torch has the varlen flash attention kernel (CUDA builds of torch >= 2.10)."""
    return torch.cuda.is_available() and _kernel() is not None


def compute_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The half-precision dtype attention on ``query`` computes in, or None when it computes in fp32."""
    if query.dtype in (torch.bfloat16, torch.float16):
        return query.dtype
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
        if dtype in (torch.bfloat16, torch.float16):
            return dtype
    return None


def usable(query: torch.Tensor) -> bool:
    """Whether the varlen kernel can take ``query`` [B, H, N, D] (its device, dtype and head size)."""
    head_dim = query.shape[-1]
    return (
        query.is_cuda
        and _kernel() is not None
        and compute_dtype(query) is not None
        and head_dim % 8 == 0
        and head_dim <= 256
    )


@dataclass(frozen=True)
class _Layout:
    """Sequences of a batch for the kernel: ``cu_q`` / ``cu_k`` [S + 1] int32 offsets into the flat queries and
    the (gathered) flat keys, their longest lengths, and ``key_index`` [K]: which flat tokens make up the keys,
    None when every sequence's keys are its own queries' tokens."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    key_index: torch.Tensor | None


@functools.lru_cache(maxsize=64)
def _layout(rows: tuple[tuple[tuple[int, ...], ...], ...], width: int, device: torch.device) -> _Layout:
    q_lengths: list[int] = []
    k_lengths: list[int] = []
    key_index: list[int] = []
    shared = False
    for b, row in enumerate(rows):
        cursor = b * width
        for prompt, *branches in row:
            prompt_tokens = list(range(cursor, cursor + prompt))
            cursor += prompt
            q_lengths.append(prompt)
            k_lengths.append(prompt)
            key_index += prompt_tokens
            for n in branches:
                shared = shared or prompt > 0
                q_lengths.append(n)
                k_lengths.append(prompt + n)
                key_index += prompt_tokens + list(range(cursor, cursor + n))
                cursor += n

    def offsets(lengths: list[int]) -> torch.Tensor:
        return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)

    return _Layout(
        cu_q=offsets(q_lengths),
        cu_k=offsets(k_lengths),
        max_q=max(q_lengths),
        max_k=max(k_lengths),
        key_index=torch.tensor(key_index, device=device) if shared else None,
    )


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rows: Rows,
    scaling: float | None,
    window: int | None,
) -> torch.Tensor | None:
    """query [B, H, N, D], key/value [B, KV, N, D], ``rows`` the segments of each row -> [B, N, H, D], or None
    when this torch's kernel cannot apply ``window``. Call only where :func:`usable` says so."""
    kernel = _kernel()
    assert kernel is not None
    varlen_attn, params = kernel
    batch, heads, width, head_dim = query.shape
    layout = _layout(tuple(tuple(row) for row in rows), width, query.device)
    options = _options(params, scaling, window, layout.max_k, head_dim)
    if options is None:
        return None
    if "enable_gqa" in params:
        options["enable_gqa"] = key.shape[1] != heads
    dtype = compute_dtype(query)

    def flat(t: torch.Tensor) -> torch.Tensor:
        """[B, H, N, D] -> [B * N, H, D] in the compute dtype."""
        return t.transpose(1, 2).reshape(batch * width, t.shape[1], head_dim).to(dtype)

    q, k, v = flat(query), flat(key), flat(value)
    if layout.key_index is not None:
        k, v = k.index_select(0, layout.key_index), v.index_select(0, layout.key_index)
    out = varlen_attn(q, k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k, **options)
    return out.reshape(batch, width, heads, head_dim)


def _options(
    params: frozenset[str], scaling: float | None, window: int | None, longest_keys: int, head_dim: int
) -> dict[str, Any] | None:
    """Keyword arguments that make the kernel causal, with ``window`` and ``scaling``; None if it cannot."""
    options: dict[str, Any] = {}
    if "window_size" in params:
        # The kernel's window counts the keys before the query; transformers' sliding_window counts the query too.
        options["window_size"] = (window - 1 if window else -1, 0)
    elif "is_causal" in params and (window is None or longest_keys <= window):
        options["is_causal"] = True
    else:
        return None
    if "scale" in params:
        options["scale"] = scaling
    elif scaling is not None and abs(scaling - head_dim**-0.5) > 1e-6:
        return None
    return options
