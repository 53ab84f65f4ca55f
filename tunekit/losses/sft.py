"""Next-token cross-entropy for supervised fine-tuning and continued pre-training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunekit.losses import LossOutput
from tunekit.losses.reduce import label_log_softmax

IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 4096) -> LossOutput:
    """Next-token cross-entropy summed over the label tokens, the unit (no metrics).

    logits: [B, T, V] (any float dtype); labels: [B, T] with IGNORE_INDEX where no loss is taken. Position t
    predicts labels[t + 1]. ``loss_sum`` [] (fp32) sums over the label tokens, ``num_units`` [] counts them; the
    runner divides by the token count of the whole optimizer step, so that micro-batches of any size weigh each
    token equally.

    The loss is computed in fp32 over chunks of ``chunk_size`` positions, so a bf16 model never needs an fp32
    copy of the whole [B, T, V] logits tensor.
    """
    vocab = logits.shape[-1]
    flat_logits = logits[:, :-1].reshape(-1, vocab)
    flat_labels = labels[:, 1:].reshape(-1)
    keep = flat_labels != IGNORE_INDEX
    flat_logits, flat_labels = flat_logits[keep], flat_labels[keep]
    total = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_labels.numel(), chunk_size):
        chunk = flat_logits[start : start + chunk_size].float()
        total = total + F.cross_entropy(chunk, flat_labels[start : start + chunk_size], reduction="sum")
    return LossOutput(total, keep.sum())


def label_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> LossOutput:
    """Cross-entropy of logits already taken at label positions only, summed over the K labels: [K, V], [K] ->
    ``loss_sum`` [] (fp32), ``num_units`` [] = K, no metrics.

    The padding-free counterpart of :func:`token_cross_entropy`: no shifting, no ignored rows, and the logits of
    positions without a label were never computed.
    """
    return LossOutput(-label_log_softmax(logits, targets).sum(), torch.tensor(targets.numel(), device=targets.device))


def with_router_aux_loss(loss: LossOutput, aux_loss: torch.Tensor, coef: float) -> LossOutput:
    """``loss`` plus a mixture-of-experts router's load-balancing loss ``aux_loss`` [] (a batch mean), weighted by
    ``coef``, counted once per unit of ``loss`` so that the runner's division by the step's units leaves
    ``coef * aux_loss`` per unit, as the model's own ``loss = cross-entropy + coef * aux_loss`` has it; the
    unweighted ``aux_loss`` is logged as ``router_aux_loss``.

    Over several micro-batches the step then carries the unit-weighted mean of their aux losses: the balance term
    is a function of each batch's routing, not a sum over tokens, so it is the one part of the loss that depends on
    how a step is split.
    """
    aux = aux_loss.float()
    return LossOutput(
        loss.loss_sum + coef * aux * loss.num_units,
        loss.num_units,
        {**loss.metrics, "router_aux_loss": aux.detach()},
    )
