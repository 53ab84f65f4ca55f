"""Online DPO's pairs: a judge ranks each prompt's G sampled completions, and the best and the worst become a pair.

A rollout holds G completions for each of P prompts as N = P * G rows, prompt p's in rows ``[p * G, (p + 1) * G)``
(see :mod:`tunekit.rl.rollout`). Every completion gets a *ranking score*:

- a judge that scores (a reward function, a reward model, an LLM judge with a pointwise rubric): its score;
- an LLM judge with a pairwise rubric: its win rate in the group's round robin, the mean over the G - 1 others of
  P(this one is better), each pair asked once (in both orders when the judge's ``both_orders`` says so).

The chosen completion is the group's first best, the rejected its last worst. When best and worst score the same
(a tie) the group carries no preference; a tie kept anyway pairs the first completion (chosen) with the last
(rejected), which for G = 2 is TRL's OnlineDPOTrainer's rule (``first >= second`` picks the first). The judge's
margin on a pair is the difference of the two scores, or for a pairwise judge ``2 * P(chosen beats rejected) - 1``
read from their own comparison (as RLAIF labelling reports it, tunekit/feedback/ranking.py); with G = 2 that is
also the difference of the two win rates, p and 1 - p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunekit.losses.sft import IGNORE_INDEX
from tunekit.rl.rollout import Rollout


def round_robin(group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first [K], second [K])``: the K = G (G - 1) / 2 pairs (i, j), i < j, of a group of G, in row-major order."""
    first, second = torch.triu_indices(group, group, offset=1)
    return first, second


def win_rates(prob_first: torch.Tensor, group: int) -> torch.Tensor:
    """[P, K] P(first is better) for each prompt's :func:`round_robin` pairs -> [P, G] each completion's mean
    probability of beating the G - 1 others."""
    first, second = round_robin(group)
    wins = prob_first.new_zeros(prob_first.shape[0], group)
    wins.index_add_(1, first, prob_first)
    wins.index_add_(1, second, 1 - prob_first)
    return wins / (group - 1)


@dataclass(frozen=True)
class PairChoice:
    """Each prompt's pair, picked from its G ranking scores."""

    chosen: torch.Tensor  # [P] long: the chosen completion's place in its group, 0 .. G-1
    rejected: torch.Tensor  # [P] long: the rejected one's
    margin: torch.Tensor  # [P] ranking score of chosen minus that of rejected (0 for a tie)
    tied: torch.Tensor  # [P] bool: best and worst scored the same


def best_and_worst(scores: torch.Tensor) -> PairChoice:
    """[P, G] ranking scores -> each group's first best (chosen) and last worst (rejected).

    In a tied group (all G equal) that is the first and the last completion, never one completion with itself.
    """
    group = scores.shape[1]
    chosen = scores.argmax(dim=1)  # torch.argmax gives the first of equal maxima
    rejected = group - 1 - scores.flip(1).argmin(dim=1)  # the last of equal minima
    rows = torch.arange(scores.shape[0])
    margin = scores[rows, chosen] - scores[rows, rejected]
    return PairChoice(chosen, rejected, margin, margin <= 0)


def direct_margin(prob_first: torch.Tensor, choice: PairChoice, group: int) -> torch.Tensor:
    """[P, K] P(first is better) on each prompt's :func:`round_robin` pairs -> [P] ``2 * P(chosen beats rejected) -
    1``, read from the comparison in which the two met."""
    low, high = torch.minimum(choice.chosen, choice.rejected), torch.maximum(choice.chosen, choice.rejected)
    # (i, j), i < j, is pair number i * (2G - i - 1) / 2 + (j - i - 1) of the row-major upper triangle.
    k = low * (2 * group - low - 1) // 2 + (high - low - 1)
    p = prob_first.gather(1, k[:, None]).squeeze(1)
    return 2 * torch.where(choice.chosen < choice.rejected, p, 1 - p) - 1


def pair_rows(choice: PairChoice, group: int) -> torch.Tensor:
    """[2P] rollout rows of the pairs: the P chosen completions, then the P rejected, as DPO batches lay them out."""
    base = torch.arange(choice.chosen.shape[0]) * group
    return torch.cat([base + choice.chosen, base + choice.rejected])


def pair_batch(rollout: Rollout, choice: PairChoice, keep: torch.Tensor, group: int) -> dict[str, torch.Tensor]:
    """The rollout's pairs as a DPO batch: rows [0, P) prompt + chosen, rows [P, 2P) prompt + rejected, the sampled
    tokens exactly (left-padded prompts, right-padded completions, EOS kept as sampled).

    ``keep`` [P] bool marks the pairs that count; the others have their labels masked, so that their rows cost
    nothing where the padding-free path runs, and go to the loss as ``keep`` = False. ``num_items`` counts the kept
    pairs; ``example_ids`` [P] name each pair's prompt by its row in the source, as spike reports do.
    """
    rows = pair_rows(choice, group)
    tensors = rollout.batch()
    batch = {name: tensors[name][rows] for name in ("input_ids", "attention_mask", "position_ids", "labels")}
    batch["labels"] = torch.where(keep.repeat(2)[:, None], batch["labels"], IGNORE_INDEX)
    batch["keep"] = keep
    batch["num_items"] = keep.sum()
    batch["num_tokens"] = batch["attention_mask"][keep.repeat(2)].sum()
    batch["example_ids"] = tensors["example_ids"][rows[: len(keep)]]
    return batch


def is_pairwise(judge: Any) -> bool:
    """Whether ``judge`` only compares (an LLM judge with a pairwise rubric) rather than scoring one response."""
    rubric = getattr(judge, "rubric", None)
    return getattr(rubric, "kind", None) == "pairwise"


@dataclass(frozen=True)
class Judged:
    """A judge's ranking of a rollout's completions."""

    scores: torch.Tensor  # [N] ranking scores (see the module docstring)
    prob_first: torch.Tensor | None = None  # [P, K] pairwise judges: P(first is better) on the round robin's pairs
    consistent: torch.Tensor | None = None  # [P * K] bool, pairwise judges: both orders picked the same winner

    def margin(self, choice: PairChoice, group: int) -> torch.Tensor:
        """[P] the judge's margin of each chosen completion over its rejected one (see the module docstring)."""
        return choice.margin if self.prob_first is None else direct_margin(self.prob_first, choice, group)


@torch.no_grad()
def judge_rollout(judge: Any, rollout: Rollout, group: int) -> Judged:
    """Rank every completion of ``rollout`` (G = ``group`` per prompt) with ``judge``."""
    if not is_pairwise(judge):
        scores = judge.score(rollout.prompts, rollout.completions, rollout.columns)
        return Judged(scores.float().cpu())
    first, second = round_robin(group)
    prompts = len(rollout.prompts) // group
    base = (torch.arange(prompts) * group)[:, None]
    a, b = (base + first).flatten().tolist(), (base + second).flatten().tolist()  # [P * K] rows each
    columns = {name: [values[i] for i in a] for name, values in rollout.columns.items()}
    verdict = judge.compare(
        [rollout.prompts[i] for i in a],
        [rollout.completions[i] for i in a],
        [rollout.completions[i] for i in b],
        columns,
    )
    prob_first = verdict.prob_first.float().cpu().view(prompts, -1)
    return Judged(win_rates(prob_first, group).flatten(), prob_first, verdict.consistent.cpu())


@dataclass(frozen=True)
class JudgedGroups:
    """One micro-batch's rollout, ranked and paired."""

    rollout: Rollout
    judged: Judged
    scores: torch.Tensor  # [N] ranking scores, after any missing-EOS penalty
    choice: PairChoice
    keep: torch.Tensor  # [P] bool: the pairs trained on


def judge_and_pair(
    judge: Any, rollout: Rollout, group: int, ties: str, missing_eos_penalty: float = 0.0
) -> JudgedGroups:
    """Rank ``rollout``'s completions with ``judge``, subtract ``missing_eos_penalty`` from those that never ended,
    and pair each prompt's best with its worst; ``ties`` is "drop" (a tied pair is not kept) or "keep"."""
    judged = judge_rollout(judge, rollout, group)
    scores = judged.scores - missing_eos_penalty * rollout.truncated.float()
    choice = best_and_worst(scores.view(-1, group))
    keep = ~choice.tied if ties == "drop" else torch.ones_like(choice.tied)
    return JudgedGroups(rollout, judged, scores, choice, keep)


def judge_metrics(parts: list[JudgedGroups], group: int) -> dict[str, float]:
    """A step's judge metrics over its micro-batches: ``judge/margin`` (over kept pairs), ``judge/ties`` (share of
    prompts), ``completion_length`` and ``truncated_fraction`` (over completions); for judges that score,
    ``judge/score`` (every completion) and ``judge/chosen`` and ``judge/rejected`` (kept pairs); for pairwise judges,
    ``judge/consistency`` (share of compared pairs whose two orders agreed; 1 when only one order is asked)."""
    keep = torch.cat([part.keep for part in parts])
    margin = torch.cat([part.judged.margin(part.choice, group) for part in parts])
    rollouts = [part.rollout for part in parts]
    metrics = {
        "judge/margin": _mean(margin[keep]),
        "judge/ties": torch.cat([part.choice.tied for part in parts]).float().mean().item(),
        "completion_length": torch.cat([r.completion_lengths for r in rollouts]).float().mean().item(),
        "truncated_fraction": torch.cat([r.truncated for r in rollouts]).float().mean().item(),
    }
    if parts[0].judged.consistent is not None:
        metrics["judge/consistency"] = torch.cat([part.judged.consistent for part in parts]).float().mean().item()
        return metrics
    scores = torch.cat([part.scores for part in parts])
    by_group = scores.view(-1, group)
    rows = torch.arange(by_group.shape[0])
    chosen = torch.cat([part.choice.chosen for part in parts])
    rejected = torch.cat([part.choice.rejected for part in parts])
    metrics["judge/score"] = scores.mean().item()
    metrics["judge/chosen"] = _mean(by_group[rows, chosen][keep])
    metrics["judge/rejected"] = _mean(by_group[rows, rejected][keep])
    return metrics


def _mean(values: torch.Tensor) -> float:
    """The mean of ``values``, 0 for none (a step whose pairs all tied)."""
    return values.float().mean().item() if values.numel() else 0.0
