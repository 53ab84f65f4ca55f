"""Online DPO's pair picking and its masked pairs in the preference loss, checked by hand."""

import pytest
import torch

from tunekit.losses.preference import PairLogps, PreferenceLossConfig, preference_loss
from tunekit.losses.sft import IGNORE_INDEX
from tunekit.rl.online_pairs import best_and_worst, pair_batch, round_robin, win_rates
from tunekit.rl.rollout import Rollout


def test_best_is_the_first_maximum_and_worst_the_last_minimum():
    scores = torch.tensor(
        [
            [0.0, 1.0, 1.0, 0.0],  # two best, two worst: the first best, the last worst
            [2.0, -1.0, 0.5, 3.0],
            [1.0, 1.0, 1.0, 1.0],  # a tie: first against last, never one completion with itself
        ]
    )
    choice = best_and_worst(scores)
    assert choice.chosen.tolist() == [1, 3, 0]
    assert choice.rejected.tolist() == [3, 1, 3]
    assert choice.margin.tolist() == [1.0, 4.0, 0.0]
    assert choice.tied.tolist() == [False, False, True]


@pytest.mark.parametrize(("first", "second"), [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (-2.0, 3.0)])
def test_two_samples_pair_as_trl_online_dpo_pairs_them(first, second):
    """TRL's OnlineDPOTrainer takes the first sample as chosen when its score is at least the second's (ties
    included), the second otherwise."""
    choice = best_and_worst(torch.tensor([[first, second]]))
    expected_chosen = 0 if first >= second else 1
    assert choice.chosen.item() == expected_chosen
    assert choice.rejected.item() == 1 - expected_chosen


def test_win_rates_of_a_round_robin():
    first, second = round_robin(3)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2)]
    # P(0 beats 1) = 0.9, P(0 beats 2) = 0.6, P(1 beats 2) = 0.2.
    rates = win_rates(torch.tensor([[0.9, 0.6, 0.2]]), 3)
    torch.testing.assert_close(rates, torch.tensor([[(0.9 + 0.6) / 2, (0.1 + 0.2) / 2, (0.4 + 0.8) / 2]]))
    # Two samples: the rates are p and 1 - p, whose difference is the pairwise verdict's margin 2p - 1.
    torch.testing.assert_close(win_rates(torch.tensor([[0.7]]), 2), torch.tensor([[0.7, 0.3]]))


def test_pairs_are_laid_out_as_dpo_batches_with_tied_pairs_masked():
    # 2 prompts x 2 completions; prompt width 2 (the first prompt left-padded with 0), completions of 2 tokens.
    input_ids = torch.tensor([[0, 5, 11, 2], [0, 5, 12, 13], [6, 7, 21, 2], [6, 7, 22, 2]])
    attention = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    labels = torch.where(torch.arange(4) >= 2, input_ids, IGNORE_INDEX)
    rollout = Rollout(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
        labels=labels,
        truncated=torch.tensor([False, True, False, False]),
        completion_lengths=torch.tensor([2, 2, 2, 2]),
        prompts=["a", "a", "b", "b"],
        completions=["x", "yz", "u", "v"],
        columns={},
        prompt_index=[7, 7, 9, 9],
    )
    choice = best_and_worst(torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
    keep = ~choice.tied
    batch = pair_batch(rollout, choice, keep, 2)
    # Rows: prompt 0's chosen (row 1), prompt 1's chosen (row 2), prompt 0's rejected (row 0), prompt 1's rejected.
    assert batch["input_ids"].tolist() == input_ids[[1, 2, 0, 3]].tolist()
    assert batch["labels"][0].tolist() == labels[1].tolist() and batch["labels"][2].tolist() == labels[0].tolist()
    assert (batch["labels"][[1, 3]] == IGNORE_INDEX).all()  # the tied pair's rows learn nothing
    assert batch["keep"].tolist() == [True, False]
    assert batch["num_items"].item() == 1
    assert batch["num_tokens"].item() == 6  # the kept pair's real tokens
    assert batch["example_ids"].tolist() == [7, 9]


def pair_tensors(n: int, requires_grad: bool = False) -> list[torch.Tensor]:
    """The six [n] fields of PairLogps (chosen, rejected, their token counts, the reference's), random."""
    g = torch.Generator().manual_seed(n)
    chosen = (-5 * torch.rand(n, generator=g)).requires_grad_(requires_grad)
    rejected = (-5 * torch.rand(n, generator=g)).requires_grad_(requires_grad)
    tokens = torch.randint(1, 6, (n,), generator=g)
    return [chosen, rejected, tokens, tokens + 1, -5 * torch.rand(n, generator=g), -5 * torch.rand(n, generator=g)]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "orpo"])
def test_masked_pairs_leave_the_loss_as_if_they_were_not_there(loss_type):
    fields = pair_tensors(5)
    keep = torch.tensor([True, False, True, True, False])
    config = PreferenceLossConfig(loss_type=loss_type, beta=0.3)
    masked = preference_loss(PairLogps(*fields, keep=keep), config)
    alone = preference_loss(PairLogps(*(field[keep] for field in fields)), config)
    assert masked.num_units.item() == 3
    torch.testing.assert_close(masked.loss_sum, alone.loss_sum)
    assert masked.metrics.keys() == alone.metrics.keys()
    for key, value in alone.metrics.items():
        torch.testing.assert_close(masked.metrics[key], value)


def test_a_batch_with_no_pair_kept_gives_a_zero_loss_with_a_zero_gradient():
    fields = pair_tensors(3, requires_grad=True)
    output = preference_loss(PairLogps(*fields, keep=torch.zeros(3, dtype=torch.bool)), PreferenceLossConfig())
    assert output.loss_sum.item() == 0.0 and output.num_units.item() == 0 and output.metrics == {}
    output.loss_sum.backward()
    assert fields[0].grad is not None and (fields[0].grad == 0).all()
