"""The one-call padding-free attention of GPUs gives each example (and each continuation of a shared prompt)
exactly the attention that the per-example path gives it.

On the CPU the kernel is replaced by a plain reference of its documented semantics (causal masks aligned to the
last key, a left window), which checks tunekit's layout: sequence offsets, the gathered prompt keys and the
window conversion. On a GPU the same cases run through torch's flash kernel itself, with gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunekit.fast import flash_varlen, varlen

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16
CASES = {
    "examples end to end": ([(5,), (40,), (1,), (17,)], None),
    "shared prompts": ([(12, 3, 20), (6,), (9, 1, 1, 4)], None),
    "sliding window": ([(30,), (10, 25, 8)], 16),
}


def reference_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, 0), **causal_and_gqa):
    """What torch's varlen flash attention computes when asked to be causal (tunekit always asks):
    q [Tq, H, D], k/v [Tk, KV, D] -> [Tq, H, D]."""
    out = []
    for i in range(len(cu_q) - 1):
        qs, ks, vs = q[cu_q[i] : cu_q[i + 1]], k[cu_k[i] : cu_k[i + 1]], v[cu_k[i] : cu_k[i + 1]]
        query_pos = torch.arange(len(qs)) + len(ks) - len(qs)
        key_pos = torch.arange(len(ks))
        allowed = key_pos[None] <= query_pos[:, None]
        if window_size[0] >= 0:
            allowed &= query_pos[:, None] - key_pos[None] <= window_size[0]
        repeat = qs.shape[1] // ks.shape[1]
        ks, vs = ks.repeat_interleave(repeat, dim=1), vs.repeat_interleave(repeat, dim=1)
        attended = F.scaled_dot_product_attention(
            qs.transpose(0, 1).float(), ks.transpose(0, 1).float(), vs.transpose(0, 1).float(), attn_mask=allowed
        )
        out.append(attended.transpose(0, 1).to(q.dtype))
    return torch.cat(out)


def per_example(query, key, value, segments, window):
    """The per-example path of tunekit.fast.varlen: [1, H, N, D] -> [1, N, H, D]."""
    lengths = [sum(s) for s in segments]
    pieces = [
        varlen._segment_attention(q, k, v, s, 0.0, None, window)
        for q, k, v, s in zip(
            query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2), segments, strict=True
        )
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2)


def inputs(segments, device, dtype):
    n = sum(sum(s) for s in segments)
    torch.manual_seed(0)
    shapes = [(1, HEADS, n, HEAD_DIM), (1, KV_HEADS, n, HEAD_DIM), (1, KV_HEADS, n, HEAD_DIM)]
    return [torch.randn(*shape, device=device, dtype=dtype, requires_grad=True) for shape in shapes]


@pytest.mark.parametrize("case", CASES)
def test_layout_gives_each_sequence_its_own_attention(case, monkeypatch):
    segments, window = CASES[case]
    params = frozenset(["scale", "window_size", "enable_gqa"])
    monkeypatch.setattr(flash_varlen, "_kernel", lambda: (reference_kernel, params))
    query, key, value = inputs(segments, "cpu", torch.bfloat16)
    flat = flash_varlen.attention(query, key, value, [segments], None, window)
    expected = per_example(query.float(), key.float(), value.float(), segments, window)
    assert flat is not None and flat.shape == expected.shape
    torch.testing.assert_close(flat.float(), expected, atol=2e-2, rtol=2e-2)


def test_a_kernel_without_windows_leaves_long_windowed_sequences_to_the_per_example_path(monkeypatch):
    monkeypatch.setattr(flash_varlen, "_kernel", lambda: (reference_kernel, frozenset(["is_causal", "scale"])))
    query, key, value = inputs([(30,)], "cpu", torch.bfloat16)
    assert flash_varlen.attention(query, key, value, [[(30,)]], None, 16) is None
    assert flash_varlen.attention(query, key, value, [[(30,)]], None, 64) is not None


def test_fp32_without_autocast_is_not_taken():
    query = torch.zeros(1, HEADS, 4, HEAD_DIM)
    assert flash_varlen.compute_dtype(query) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert flash_varlen.compute_dtype(query) == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's flash kernel needs a GPU (benchmarks/gpu_checks.sh)")
@pytest.mark.parametrize("case", CASES)
def test_flash_kernel_matches_per_example_attention_with_gradients(case):
    segments, window = CASES[case]
    query, key, value = inputs(segments, "cuda", torch.bfloat16)
    assert flash_varlen.usable(query)
    flat = flash_varlen.attention(query, key, value, [segments], None, window)
    assert flat is not None
    grads = torch.autograd.grad(flat.float().square().sum(), [query, key, value])
    expected = per_example(query, key, value, segments, window)
    expected_grads = torch.autograd.grad(expected.float().square().sum(), [query, key, value])
    torch.testing.assert_close(flat.float(), expected.float(), atol=2e-2, rtol=2e-2)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)
