"""Log-probs of the label tokens: the hand-written backward is the true gradient, in every chunking and dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunekit.losses.reduce import label_log_softmax


def reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def test_gradient_is_exact_across_chunks():
    torch.manual_seed(0)
    logits = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    # 3 rows a chunk: chunks of 3, 3 and 1 rows.
    assert torch.autograd.gradcheck(lambda x: label_log_softmax(x, targets, chunk_size=3), (logits,))
    assert torch.autograd.gradcheck(lambda x: label_log_softmax(x, targets), (logits,))


def test_matches_log_softmax_for_fp32_and_bf16_logits():
    torch.manual_seed(0)
    targets = torch.randint(0, 300, (40,))
    upstream = torch.randn(40)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        logits = (torch.randn(40, 300) * 4).to(dtype).requires_grad_()
        expected_logits = logits.detach().clone().requires_grad_()
        got = label_log_softmax(logits, targets, chunk_size=16)
        want = reference(expected_logits, targets)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
        (got * upstream).sum().backward()
        (want * upstream).sum().backward()
        assert logits.grad.dtype == dtype
        torch.testing.assert_close(logits.grad.float(), expected_logits.grad.float(), atol=tolerance, rtol=tolerance)


def test_no_labels_gives_an_empty_result_that_still_backpropagates():
    logits = torch.randn(0, 5, requires_grad=True)
    out = label_log_softmax(logits, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    out.sum().backward()
    assert logits.grad.shape == (0, 5)
