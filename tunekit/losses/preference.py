"""Direct preference losses (the DPO family) on per-sequence log-probs of chosen/rejected pairs.

Each loss type is one small function ``(PairLogps, PreferenceLossConfig) -> (per-pair losses [B], extra metrics)``;
``preference_loss`` looks the type up in ``PREFERENCE_LOSSES``, sums over the pairs into a
:class:`~tunekit.losses.LossOutput` and adds the metrics every type shares. Numbers match
TRL 1.16: DPOTrainer for sigmoid / ipo / hinge / robust, CPOTrainer (loss_type="simpo", cpo_alpha=0) for simpo and
ORPOTrainer for orpo (see the notes on each function for the conventions that differ between those trainers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tunekit.errors import require
from tunekit.losses import LossOutput

LossType = Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo"]


@dataclass
class PairLogps:
    """Per-pair sequence log-probs; every field is [B], row i of each field describes pair i."""

    chosen: torch.Tensor  # summed log-probs of the chosen completion tokens under the policy
    rejected: torch.Tensor  # same for the rejected completion
    chosen_tokens: torch.Tensor  # number of completion tokens summed into `chosen` (int or float)
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None  # same sums under the reference policy; None for reference-free types
    ref_rejected: torch.Tensor | None = None
    # bool: the pairs that count. The others (online DPO's tied pairs) only keep the batch's shape: they add nothing
    # to the loss, its unit count or the metrics. None: every pair counts.
    keep: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.chosen.shape
        for name in ("chosen", "rejected", "chosen_tokens", "rejected_tokens", "ref_chosen", "ref_rejected", "keep"):
            value = getattr(self, name)
            # A stray [B, 1] would broadcast against [B] into a [B, B] loss that still looks plausible.
            if value is not None and (value.dim() != 1 or value.shape != shape):
                raise ValueError(f"PairLogps.{name} must be [B] = {tuple(shape)}; got {tuple(value.shape)}")

    def kept(self) -> PairLogps:
        """The pairs ``keep`` marks, as PairLogps of [B'] fields with no mask (all of them when ``keep`` is None)."""
        if self.keep is None:
            return self
        keep = self.keep.bool()
        names = ("chosen", "rejected", "chosen_tokens", "rejected_tokens", "ref_chosen", "ref_rejected")
        return PairLogps(*(None if getattr(self, n) is None else getattr(self, n)[keep] for n in names))


@dataclass
class PreferenceLossConfig:
    # sigmoid: DPO; ipo: IPO (squared distance to a fixed margin); hinge: SLiC-style hinge; robust: DPO unbiased for
    # flipped labels (label_smoothing); simpo: SimPO and orpo: ORPO, both reference-free. See docs/dpo.md.
    loss_type: LossType = "sigmoid"
    # sigmoid/hinge/robust/simpo: scale of the implicit reward; ipo: the regulariser tau (target margin 1 / (2 beta));
    # orpo: lambda, the weight of the odds-ratio term against the NLL term. Also scales the logged rewards.
    beta: float = 0.1
    # robust only: the assumed probability that a preference label is flipped, in [0, 0.5) (Chowdhury et al. 2024).
    # simpo: conservative (cDPO-style) label smoothing, as TRL's CPOTrainer applies it. Other types must leave it 0.
    label_smoothing: float = 0.0
    # simpo only: target margin on the reward scale, loss = -log sigmoid(beta * (avg_c - avg_r) - simpo_gamma);
    # the SimPO paper's gamma and TRL CPOConfig.simpo_gamma (TRL writes it as beta * (delta - gamma / beta)).
    simpo_gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.loss_type not in PREFERENCE_LOSSES:
            raise _unknown_type(self.loss_type)
        require(self.beta > 0, "beta", f"must be positive, got {self.beta}")
        eps = self.label_smoothing
        if self.loss_type == "robust":
            # The robust loss divides by 1 - 2 * label_smoothing.
            require(0.0 <= eps < 0.5, "label_smoothing", f"must lie in [0, 0.5) for the robust loss, got {eps}")
        elif self.loss_type == "simpo":
            require(0.0 <= eps <= 0.5, "label_smoothing", f"must lie in [0, 0.5] for simpo, got {eps}")
        else:
            # Silently ignoring it would let a run believe it trained with smoothing.
            require(eps == 0.0, "label_smoothing", f"is used only by 'robust' and 'simpo', not {self.loss_type!r}")


REFERENCE_FREE = frozenset({"simpo", "orpo"})

# When every token has probability ~1 the average log-prob reaches 0, log(1 - p) is -inf and ORPO's gradient NaN.
_MAX_AVG_LOGP = -1e-6


def _unknown_type(loss_type: str) -> ValueError:
    return ValueError(f"unknown preference loss_type {loss_type!r}; valid types: {sorted(PREFERENCE_LOSSES)}")


def _log_ratios(logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """[B], [B]: log pi(y|x) - log pi_ref(y|x) for the chosen and the rejected completions."""
    return logps.chosen.float() - logps.ref_chosen.float(), logps.rejected.float() - logps.ref_rejected.float()


def _per_token(summed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[B] summed log-probs -> [B] averages over the completion tokens (an empty completion counts as one token)."""
    return summed.float() / tokens.float().clamp(min=1.0)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012): expm1 near 0, log1p far from it."""
    near_zero = x > -math.log(2.0)
    return torch.where(near_zero, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def sigmoid_loss(logps: PairLogps, config: PreferenceLossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), summed log-probs."""
    chosen, rejected = _log_ratios(logps)
    return -F.logsigmoid(config.beta * (chosen - rejected)), {}


def hinge_loss(logps: PairLogps, config: PreferenceLossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SLiC-style hinge on the DPO margin: max(0, 1 - beta * (chosen log-ratio - rejected log-ratio))."""
    chosen, rejected = _log_ratios(logps)
    return torch.relu(1.0 - config.beta * (chosen - rejected)), {}


def ipo_loss(logps: PairLogps, config: PreferenceLossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO (Azar et al. 2023, eq. 17): (delta - 1 / (2 beta))^2, delta the difference of PER-TOKEN log-ratios.

    Each log-ratio is divided by its own completion's token count before the difference, as TRL 1.16's DPOTrainer
    does: with summed log-probs the squared loss grows with the completion length and beta means nothing fixed.
    beta does not scale delta here; it sets the target margin.
    """
    chosen, rejected = _log_ratios(logps)
    delta = _per_token(chosen, logps.chosen_tokens) - _per_token(rejected, logps.rejected_tokens)
    return (delta - 1.0 / (2.0 * config.beta)) ** 2, {}


def robust_loss(logps: PairLogps, config: PreferenceLossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Robust DPO (Chowdhury et al. 2024): an unbiased DPO loss when each label is flipped with probability eps.

    ((1 - eps) * l(z) - eps * l(-z)) / (1 - 2 eps), with l(z) = -log sigmoid(z) and z = beta * DPO margin. Unlike
    cDPO's smoothing (+ eps * l(-z)), the flipped term is subtracted, so its expectation under the noise is the
    clean DPO loss. eps = 0 gives plain DPO.
    """
    chosen, rejected = _log_ratios(logps)
    z = config.beta * (chosen - rejected)
    eps = config.label_smoothing
    return ((1.0 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1.0 - 2.0 * eps), {}


def simpo_loss(logps: PairLogps, config: PreferenceLossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimPO (Meng et al. 2024), reference-free: -log sigmoid(beta * (avg_c - avg_r) - gamma).

    avg_* are log-probs averaged over each completion's tokens, so the implicit reward does not favour length.
    With label_smoothing eps the loss is cDPO-smoothed, (1 - eps) * l(z) + eps * l(-z), as in TRL's CPOTrainer.
    This is pure SimPO; TRL's CPOTrainer adds a chosen-NLL term unless cpo_alpha=0.
    """
    chosen = _per_token(logps.chosen, logps.chosen_tokens)
    rejected = _per_token(logps.rejected, logps.rejected_tokens)
    z = config.beta * (chosen - rejected) - config.simpo_gamma
    eps = config.label_smoothing
    return (1.0 - eps) * -F.logsigmoid(z) + eps * -F.logsigmoid(-z), {}


def orpo_loss(logps: PairLogps, config: PreferenceLossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO (Hong et al. 2024), reference-free: chosen NLL per token - lambda * log sigmoid(log odds ratio).

    odds(y) = p / (1 - p) with p = exp(average log-prob per completion token); lambda is ``config.beta`` as in
    TRL's ORPOTrainer. The NLL term is -avg_c, each chosen completion's own per-token mean, so that summing pairs
    and dividing by their number gives a mean over pairs. TRL instead takes one token-level cross-entropy over the
    whole chosen batch, prompt tokens included: the two agree when the chosen completions are equally long and the
    prompt is not trained on.
    """
    avg_chosen = _per_token(logps.chosen, logps.chosen_tokens)
    chosen = avg_chosen.clamp(max=_MAX_AVG_LOGP)
    rejected = _per_token(logps.rejected, logps.rejected_tokens).clamp(max=_MAX_AVG_LOGP)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    log_sigmoid_odds = F.logsigmoid(log_odds)
    nll = -avg_chosen
    with torch.no_grad():
        extra = {"nll_loss": nll.mean(), "log_odds_ratio": log_sigmoid_odds.mean(), "log_odds_chosen": log_odds.mean()}
    return nll - config.beta * log_sigmoid_odds, extra


# (logps, config) -> (per-pair losses [B], metrics particular to the type)
LossFn = Callable[[PairLogps, PreferenceLossConfig], tuple[torch.Tensor, dict[str, torch.Tensor]]]

PREFERENCE_LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "robust": robust_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
}


def preference_loss(logps: PairLogps, config: PreferenceLossConfig) -> LossOutput:
    """The ``config.loss_type`` loss summed over the B pairs (``num_units`` = B), and per-batch mean metrics.

    The runner divides by the number of pairs in the optimizer step. Pairs outside ``logps.keep`` are left out
    of the loss, ``num_units`` and the metrics (a batch with none kept gives a zero loss over 0 units and no
    metrics). Metrics (detached scalars, means over pairs):
    "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy" for the implicit reward, which is
    beta * (policy - reference) summed log-probs for reference-based types and beta * per-token average log-prob
    for reference-free ones; "logps/chosen", "logps/rejected", the policy log-probs those rewards are built from
    (summed, or per-token averages for reference-free types); plus any metrics particular to the type.
    """
    loss_fn = PREFERENCE_LOSSES.get(config.loss_type)
    if loss_fn is None:
        raise _unknown_type(config.loss_type)
    reference_free = config.loss_type in REFERENCE_FREE
    if not reference_free and (logps.ref_chosen is None or logps.ref_rejected is None):
        raise ValueError(
            f"loss_type {config.loss_type!r} needs reference log-probs (PairLogps.ref_chosen and ref_rejected); "
            f"only {sorted(REFERENCE_FREE)} train without a reference model"
        )
    everything = logps
    logps = logps.kept()
    if logps.chosen.numel() == 0:
        # No pair counts: a zero loss still tied to the graph, so that a backward through it works (and, under DDP,
        # still meets the other processes' gradients); no metrics, which the runner would weight by 0 units anyway.
        zero = (everything.chosen.sum() + everything.rejected.sum()) * 0.0
        return LossOutput(zero, torch.tensor(0, device=zero.device), {})
    losses, extra = loss_fn(logps, config)

    with torch.no_grad():
        if reference_free:
            chosen_logps = _per_token(logps.chosen, logps.chosen_tokens)
            rejected_logps = _per_token(logps.rejected, logps.rejected_tokens)
            chosen_rewards, rejected_rewards = config.beta * chosen_logps, config.beta * rejected_logps
        else:
            chosen_logps, rejected_logps = logps.chosen.float(), logps.rejected.float()
            chosen_ratio, rejected_ratio = _log_ratios(logps)
            chosen_rewards, rejected_rewards = config.beta * chosen_ratio, config.beta * rejected_ratio
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": chosen_logps.mean(),
            "logps/rejected": rejected_logps.mean(),
            **extra,
        }
    return LossOutput(losses.sum(), torch.tensor(len(losses), device=losses.device), metrics)
