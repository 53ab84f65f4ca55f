"""Forming one pair from k judged samples: best against worst by score, most against least preferred round-robin,
with the counts derived by hand."""

from itertools import combinations

import pytest
import torch

from tunekit.feedback.ranking import candidates, rank_by_score, rank_round_robin, win_matrix
from tunekit.judges import PairVerdict


class LengthJudge:
    """Scores a response by its length; records what it was asked."""

    name = "length"

    def __init__(self):
        self.asked = []

    def score(self, prompts, completions, columns):
        self.asked.append((list(prompts), list(completions), columns))
        return torch.tensor([float(len(c)) for c in completions])


class PreferenceJudge:
    """A pairwise judge with fixed preferences: P(x beats y) = table[x, y] asked in order; a position bias of
    ``bias`` is added to the first-shown response in each order, and the orders are averaged as LLMJudge does."""

    name = "pairwise"
    both_orders = True

    def __init__(self, table, bias=0.0):
        self.table, self.bias, self.pairs = table, bias, []

    def compare(self, prompts, first, second, columns):
        self.pairs += list(zip(first, second, strict=True))
        in_order = torch.tensor([min(1.0, self.table[(a, b)] + self.bias) for a, b in zip(first, second, strict=True)])
        swapped = torch.tensor([min(1.0, self.table[(b, a)] + self.bias) for a, b in zip(first, second, strict=True)])
        prob = (in_order + 1 - swapped) / 2
        consistent = (in_order > 0.5) == (1 - swapped > 0.5)
        return PairVerdict(prob, 2 * prob - 1, consistent)


def table_of(order_probs):
    """{(a, b): p} and {(b, a): 1 - p} from {(a, b): p}."""
    out = {}
    for (a, b), p in order_probs.items():
        out[(a, b)], out[(b, a)] = p, 1 - p
    return out


def test_candidates_drop_empty_and_repeated_responses_keeping_first_order():
    assert candidates(["b", " ", "a", "b", "", "c"]) == ["b", "a", "c"]


def test_best_against_worst_by_score_in_one_judge_call():
    judge = LengthJudge()
    samples = [["aa", "a", "aaa"], ["x", "xx"]]
    ranking = rank_by_score(judge, ["p1", "p2"], [{"answer": "1"}, {"answer": "2"}], samples)
    assert len(judge.asked) == 1
    prompts, completions, columns = judge.asked[0]
    assert completions == ["aa", "a", "aaa", "x", "xx"] and prompts == ["p1"] * 3 + ["p2"] * 2
    assert columns == {"answer": ["1", "1", "1", "2", "2"]}
    first, second = ranking.choices
    assert (first.chosen, first.rejected, first.margin) == ("aaa", "a", 2.0)
    assert (first.chosen_score, first.rejected_score, first.consistent) == (3.0, 1.0, None)
    assert (second.chosen, second.rejected, second.margin) == ("xx", "x", 1.0)


def test_ties_pick_the_first_best_and_the_last_worst_and_fewer_than_two_give_no_pair():
    judge = LengthJudge()
    ranking = rank_by_score(judge, ["q"] * 3, [{}] * 3, [["ab", "cd", "ef"], ["same", "same"], ["", "x"]])
    tie, same, lone = ranking.choices
    assert (tie.chosen, tie.rejected, tie.margin) == ("ab", "ef", 0.0)
    assert same is None and lone is None
    assert judge.asked[0][1] == ["ab", "cd", "ef", "same", "x"]  # each distinct non-empty response scored once


def test_round_robin_picks_the_highest_and_lowest_win_rate_and_reads_their_own_comparison():
    # a beats b and c; b beats c: win rates a 0.8, b 0.45, c 0.25.
    table = table_of({("a", "b"): 0.7, ("a", "c"): 0.9, ("b", "c"): 0.6})
    judge = PreferenceJudge(table)
    ranking = rank_round_robin(judge, ["q"], [{}], [["b", "a", "c", "a"]])
    (choice,) = ranking.choices
    assert judge.pairs == [("b", "a"), ("b", "c"), ("a", "c")]  # 3 distinct responses: 3 pairs
    assert (choice.chosen, choice.rejected) == ("a", "c")
    assert choice.margin == pytest.approx(2 * 0.9 - 1)
    assert choice.consistent is True and choice.chosen_score is None
    assert (ranking.comparisons, ranking.consistent) == (3, 3)


def test_round_robin_reports_orders_that_disagree():
    # A bias of 0.3 towards the first-shown response makes the close pair (b, c) disagree across orders.
    table = table_of({("a", "b"): 0.9, ("a", "c"): 0.95, ("b", "c"): 0.6})
    ranking = rank_round_robin(PreferenceJudge(table, bias=0.3), ["q"], [{}], [["a", "b", "c"]])
    assert (ranking.comparisons, ranking.consistent) == (3, 2)
    assert ranking.choices[0].consistent is True  # a against c: both orders pick a


def test_a_preference_cycle_gives_a_negative_margin():
    # a beats b, b beats c, c beats a: win rates a 0.65, b 0.5, c 0.35, yet c beats a in their own comparison.
    table = table_of({("a", "b"): 0.9, ("b", "c"): 0.9, ("a", "c"): 0.4})
    (choice,) = rank_round_robin(PreferenceJudge(table), ["q"], [{}], [["a", "b", "c"]]).choices
    assert (choice.chosen, choice.rejected) == ("a", "c")
    assert choice.margin == pytest.approx(2 * 0.4 - 1)


def test_win_matrix_fills_both_sides_of_each_pair():
    probs = torch.tensor([0.7, 0.9, 0.6])
    beats = win_matrix(3, probs)
    for (i, j), p in zip(combinations(range(3), 2), probs.tolist(), strict=True):
        assert beats[i, j] == pytest.approx(p) and beats[j, i] == pytest.approx(1 - p)
    assert beats.diagonal().tolist() == [0.0, 0.0, 0.0]
