import math

import torch
import torch.nn.functional as F

from tunekit.losses.reduce import masked_mean, selective_log_softmax
from tunekit.losses.sft import IGNORE_INDEX, token_cross_entropy


def test_cross_entropy_matches_hand_derived_values():
    # One sequence of 3 positions over a vocabulary of 2. Position t predicts labels[t + 1].
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    # t=0: uniform -> -log(1/2); t=1: p(0) = 3/4 -> -log(3/4). The last position predicts nothing.
    expected = math.log(2.0) - math.log(0.75)
    loss = token_cross_entropy(logits, labels)
    assert math.isclose(loss.loss_sum.item(), expected, rel_tol=1e-6)
    assert loss.num_units.item() == 2
    assert loss.metrics == {}


def test_ignored_labels_contribute_nothing_and_chunking_is_exact():
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 11)
    labels = torch.randint(0, 11, (3, 9))
    labels[0, :5] = IGNORE_INDEX
    labels[2, 4:] = IGNORE_INDEX
    whole = token_cross_entropy(logits, labels).loss_sum
    chunked = token_cross_entropy(logits, labels, chunk_size=3).loss_sum
    # torch's own per-position loss, shifted by hand, is the reference.
    per_token = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.allclose(whole, per_token.sum(), atol=1e-5)


def test_bf16_logits_are_reduced_in_fp32():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 50)
    labels = torch.randint(0, 50, (2, 6))
    full = token_cross_entropy(logits, labels).loss_sum
    half = token_cross_entropy(logits.bfloat16(), labels).loss_sum
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, rtol=2e-2)


def test_selective_log_softmax_equals_full_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 17)
    index = torch.randint(0, 17, (2, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, index), expected, atol=1e-6)
    assert torch.allclose(selective_log_softmax(logits.bfloat16(), index), expected, atol=5e-2)


def test_masked_mean_ignores_masked_positions():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(values, mask).item() == 2.0
    assert torch.equal(masked_mean(values, mask, dim=1), torch.tensor([1.5, 3.0]))


def test_label_cross_entropy_equals_the_shifted_loss_at_label_positions():
    from tunekit.losses.sft import label_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = IGNORE_INDEX
    expected_output = token_cross_entropy(logits, labels)
    expected = expected_output.loss_sum
    keep = labels[:, 1:] != IGNORE_INDEX
    got_output = label_cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    got = got_output.loss_sum
    assert got_output.num_units == expected_output.num_units == keep.sum()
    assert torch.allclose(got, expected, atol=1e-5)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    (grad_got,) = torch.autograd.grad(got, logits)
    assert torch.allclose(grad_got, grad_expected, atol=1e-6)
    # bf16 logits are computed in fp32.
    assert label_cross_entropy(logits[:, :-1][keep].bfloat16(), labels[:, 1:][keep]).loss_sum.dtype == torch.float32
