"""From k judged samples of one prompt to one preference pair: the most preferred over the least preferred.

Samples that are empty (nothing but whitespace) are set aside, since the reward and DPO recipes drop pairs with an
empty response, and repeated samples are judged once. A prompt left with fewer than two distinct responses gives no
pair. Otherwise:

- a judge that scores (a reward function, a reward model, an LLM judge with a pointwise rubric) scores each distinct
  response once; chosen is the best, rejected the worst (the first best and the last worst on ties), and the margin
  is the difference of their scores, in the judge's units;
- a pairwise LLM judge compares the d distinct responses round-robin, d (d - 1) / 2 pairs, each in both orders
  when the judge asks both (``judge.both_orders``). Each response's win rate is its mean probability of beating the
  others; chosen has the highest, rejected the lowest, and the margin is ``2 * P(chosen beats rejected) - 1`` read
  from their own comparison, in [-1, 1]. A judge whose direct verdict contradicts the win rates (a preference
  cycle) gives a negative margin, which no threshold keeps. d is the number of samples at most, so the cost is
  O(k^2) comparisons per prompt: meant for small k (2 to 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch


@dataclass
class Choice:
    """The pair one prompt's samples give."""

    chosen: str
    rejected: str
    margin: float  # how far chosen is ahead, in the judge's units
    chosen_score: float | None = None  # judges that score: each side's score
    rejected_score: float | None = None
    consistent: bool | None = None  # pairwise judges asking both orders: they agreed on chosen vs rejected


@dataclass
class Ranking:
    """The pairs of a batch of prompts, and what a pairwise judge's comparisons showed."""

    choices: list[Choice | None]  # per prompt; None: fewer than two distinct non-empty responses
    comparisons: int = 0  # pairwise judges: pairs compared (each in both orders where the judge asks both)
    consistent: int = 0  # ... of which both orders picked the same winner


def candidates(samples: list[str]) -> list[str]:
    """The distinct non-empty responses among ``samples``, in the order they first appear."""
    return list(dict.fromkeys(s for s in samples if s.strip()))


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """name -> [N] the data columns of ``rows``, as judges take them (a row without a column gives None)."""
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: [row.get(name) for row in rows] for name in names}


def rank_by_score(judge: Any, prompts: list[str], columns: list[dict[str, Any]], samples: list[list[str]]) -> Ranking:
    """Best against worst by ``judge.score``: ``prompts[i]`` as the judge reads it, ``columns[i]`` the data row's
    other columns and ``samples[i]`` the responses to it. One judge call scores every distinct response of every
    prompt, so that a model judge batches them."""
    options = [candidates(s) for s in samples]
    rows = [i for i, o in enumerate(options) for _ in o]
    flat = [text for o in options for text in o]
    if flat:
        scores = judge.score([prompts[i] for i in rows], flat, _columns([columns[i] for i in rows])).float().tolist()
    else:
        scores = []
    choices: list[Choice | None] = []
    at = 0
    for option in options:
        mine, at = scores[at : at + len(option)], at + len(option)
        if len(option) < 2:
            choices.append(None)
            continue
        # A stable sort: ties keep their order, so the first best and the last worst are picked.
        order = sorted(range(len(option)), key=lambda i: -mine[i])
        best, worst = order[0], order[-1]
        choices.append(Choice(option[best], option[worst], mine[best] - mine[worst], mine[best], mine[worst]))
    return Ranking(choices)


def rank_round_robin(
    judge: Any, prompts: list[str], columns: list[dict[str, Any]], samples: list[list[str]]
) -> Ranking:
    """Most against least preferred by a pairwise ``judge.compare`` over every pair of distinct responses
    (arguments as for :func:`rank_by_score`); one judge call compares every pair of every prompt."""
    options = [candidates(s) for s in samples]
    asked = [(p, i, j) for p, o in enumerate(options) for i, j in combinations(range(len(o)), 2)]
    if not asked:
        return Ranking([None] * len(options))
    verdict = judge.compare(
        [prompts[p] for p, _, _ in asked],
        [options[p][i] for p, i, _ in asked],
        [options[p][j] for p, _, j in asked],
        _columns([columns[p] for p, _, _ in asked]),
    )
    prob, agreed = verdict.prob_first.float(), verdict.consistent
    both_orders = getattr(judge, "both_orders", False)
    choices: list[Choice | None] = []
    at = 0
    for option in options:
        n = len(option)
        pairs = n * (n - 1) // 2
        if n < 2:
            choices.append(None)
            continue
        beats = win_matrix(n, prob[at : at + pairs])
        rates = beats.sum(dim=1) / (n - 1)
        order = sorted(range(n), key=lambda i: -float(rates[i]))
        best, worst = order[0], order[-1]
        # Where in this prompt's comparisons chosen and rejected met, to read whether both orders agreed there.
        met = list(combinations(range(n), 2)).index((min(best, worst), max(best, worst)))
        consistent = bool(agreed[at + met]) if both_orders else None
        choices.append(Choice(option[best], option[worst], float(2 * beats[best, worst] - 1), consistent=consistent))
        at += pairs
    return Ranking(
        choices, comparisons=len(asked) if both_orders else 0, consistent=int(agreed.sum()) if both_orders else 0
    )


def win_matrix(n: int, prob_first: torch.Tensor) -> torch.Tensor:
    """[n, n] P(response i beats response j) from the verdicts on the pairs ``combinations(range(n), 2)``, in that
    order (``prob_first`` [n (n - 1) / 2]: P(the first of the pair is better)); the diagonal is 0."""
    beats = torch.zeros(n, n)
    for (i, j), p in zip(combinations(range(n), 2), prob_first.tolist(), strict=True):
        beats[i, j], beats[j, i] = p, 1 - p
    return beats
