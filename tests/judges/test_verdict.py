"""Reading verdicts from probabilities and combining them, by hand."""

import math

import pytest
import torch

from tunekit.judges.verdict import choice_probs, cohen_kappa, combine_orders, expected_score


def test_choice_probs_renormalise_over_the_allowed_answers_only():
    logits = torch.tensor([[0.0, math.log(3.0), 5.0, 0.0]])  # token 2 is likely but not an allowed answer
    probs = choice_probs(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(probs, torch.tensor([[0.25, 0.75]]))


def test_expected_score_weights_each_answer_by_its_probability():
    probs = torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(expected_score(probs, torch.tensor([1.0, 2.0, 3.0])), torch.tensor([2.0, 2.0]))


def test_both_orders_cancel_a_judge_that_always_picks_the_first_position():
    # Asked (a, b) it says "first" with 0.9; asked (b, a) it again says "first" with 0.9.
    prob, consistent = combine_orders(torch.tensor([0.9]), torch.tensor([0.9]))
    torch.testing.assert_close(prob, torch.tensor([0.5]))
    assert not consistent.item()
    # A judge that prefers a either way: 0.8 shown first, and b (shown first) gets only 0.3.
    prob, consistent = combine_orders(torch.tensor([0.8]), torch.tensor([0.3]))
    torch.testing.assert_close(prob, torch.tensor([0.75]))
    assert consistent.item()


@pytest.mark.parametrize(
    ("a", "b", "kappa"),
    [
        ([0, 1, 0, 1], [0, 1, 0, 1], 1.0),
        ([0, 1, 0, 1], [1, 0, 1, 0], -1.0),
        ([0, 0, 1, 1], [0, 1, 1, 1], 0.5),  # p_o = 3/4, p_e = 1/2 * 1/4 + 1/2 * 3/4 = 1/2
        ([1, 1, 1], [1, 1, 1], 1.0),
    ],
)
def test_cohen_kappa_by_hand(a, b, kappa):
    assert cohen_kappa(torch.tensor(a), torch.tensor(b)) == pytest.approx(kappa)
