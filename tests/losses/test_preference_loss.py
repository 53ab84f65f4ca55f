import math
import types
from collections import defaultdict

import pytest
import torch
from trl_source import IdentityAccelerator, namespace, stand_in, trl_functions

from tunekit.losses.preference import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE,
    PairLogps,
    PreferenceLossConfig,
    preference_loss,
)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


# One pair. Chosen: summed log-prob -4 over 2 tokens (average -2); rejected: -12 over 4 tokens (average -3).
# Reference: -5 and -11, so the log-ratios are +1 (chosen) and -1 (rejected): a DPO margin of 2.
PAIR = PairLogps(
    chosen=torch.tensor([-4.0]),
    rejected=torch.tensor([-12.0]),
    chosen_tokens=torch.tensor([2]),
    rejected_tokens=torch.tensor([4]),
    ref_chosen=torch.tensor([-5.0]),
    ref_rejected=torch.tensor([-11.0]),
)


def loss_of(loss_type: str, **config) -> float:
    loss = preference_loss(PAIR, PreferenceLossConfig(loss_type=loss_type, **config))
    assert loss.loss_sum.shape == () and loss.num_units.item() == 1
    return loss.loss_sum.item()


def test_sigmoid_hinge_by_hand():
    # beta * margin = 0.5 * 2 = 1: sigmoid -> -log sigmoid(1) = log(1 + e^-1); hinge -> max(0, 1 - 1) = 0.
    assert math.isclose(loss_of("sigmoid", beta=0.5), softplus(-1.0), rel_tol=1e-6)
    assert loss_of("hinge", beta=0.5) == 0.0
    # beta = 0.25: hinge -> 1 - 0.5.
    assert math.isclose(loss_of("hinge", beta=0.25), 0.5, rel_tol=1e-6)


def test_ipo_by_hand_uses_per_token_log_ratios():
    # Per-token log-ratios: chosen 1 / 2 tokens = 0.5, rejected -1 / 4 tokens = -0.25; delta = 0.75.
    # beta = 0.5 -> target 1 / (2 beta) = 1 -> (0.75 - 1)^2 = 0.0625.
    assert math.isclose(loss_of("ipo", beta=0.5), 0.0625, rel_tol=1e-6)


def test_robust_by_hand():
    # z = beta * margin = 1, eps = 0.1, l(z) = -log sigmoid(z) = softplus(-z), and l(-z) = l(z) + z. So
    # ((1 - eps) l(z) - eps l(-z)) / (1 - 2 eps) = ((1 - 2 eps) l(z) - eps z) / (1 - 2 eps) = l(1) - 0.1 / 0.8.
    assert math.isclose(loss_of("robust", beta=0.5, label_smoothing=0.1), softplus(-1.0) - 0.125, rel_tol=1e-6)
    # eps = 0 is plain DPO.
    assert math.isclose(loss_of("robust", beta=0.5), loss_of("sigmoid", beta=0.5), rel_tol=1e-6)


def test_simpo_by_hand():
    # Averages -2 and -3: z = beta * (-2 - -3) - gamma = 0.5 * 1 - 1.5 = -1 -> -log sigmoid(-1) = log(1 + e).
    assert math.isclose(loss_of("simpo", beta=0.5, simpo_gamma=1.5), softplus(1.0), rel_tol=1e-6)
    # Smoothing eps: (1 - eps) l(z) + eps l(-z) = 0.8 * log(1 + e) + 0.2 * log(1 + e^-1).
    expected = 0.8 * softplus(1.0) + 0.2 * softplus(-1.0)
    assert math.isclose(loss_of("simpo", beta=0.5, simpo_gamma=1.5, label_smoothing=0.2), expected, rel_tol=1e-6)


def test_orpo_by_hand():
    # Averages -2 and -3. log odds(y) = log p - log(1 - p) with log p the average:
    # log odds ratio = (-2 - -3) - (log(1 - e^-2) - log(1 - e^-3)).
    log_odds = 1.0 - (math.log(1 - math.exp(-2.0)) - math.log(1 - math.exp(-3.0)))  # = 1.09434...
    # loss = NLL of chosen per token (2) - lambda * log sigmoid(log odds), lambda = beta = 0.5.
    expected = 2.0 + 0.5 * softplus(-log_odds)
    assert math.isclose(loss_of("orpo", beta=0.5), expected, rel_tol=1e-6)


def test_orpo_stays_finite_when_the_chosen_completion_is_certain():
    # An average log-prob of exactly 0 (p = 1) makes log(1 - p) = -inf; the loss and its gradient must stay finite.
    chosen = torch.tensor([0.0, -1.0], requires_grad=True)
    logps = PairLogps(chosen, torch.tensor([-2.0, -2.0]), torch.tensor([3, 3]), torch.tensor([3, 3]))
    loss = preference_loss(logps, PreferenceLossConfig("orpo"))
    loss.loss_sum.backward()
    assert torch.isfinite(loss.loss_sum) and torch.isfinite(chosen.grad).all()


def test_shared_metrics_by_hand():
    metrics = preference_loss(PAIR, PreferenceLossConfig(loss_type="sigmoid", beta=0.5)).metrics
    # Reference-based: rewards = beta * log-ratio = 0.5 * (+1, -1); logps are the policy's summed log-probs.
    assert metrics["rewards/chosen"].item() == 0.5
    assert metrics["rewards/rejected"].item() == -0.5
    assert metrics["rewards/margin"].item() == 1.0
    assert metrics["rewards/accuracy"].item() == 1.0
    assert (metrics["logps/chosen"].item(), metrics["logps/rejected"].item()) == (-4.0, -12.0)

    metrics = preference_loss(PAIR, PreferenceLossConfig(loss_type="simpo", beta=0.5)).metrics
    # Reference-free: rewards = beta * average log-prob = 0.5 * (-2, -3); logps are the averages.
    assert metrics["rewards/chosen"].item() == -1.0
    assert metrics["rewards/rejected"].item() == -1.5
    assert metrics["rewards/margin"].item() == 0.5
    assert (metrics["logps/chosen"].item(), metrics["logps/rejected"].item()) == (-2.0, -3.0)


def test_reference_free_types_need_no_reference():
    no_ref = PairLogps(PAIR.chosen, PAIR.rejected, PAIR.chosen_tokens, PAIR.rejected_tokens)
    for loss_type in REFERENCE_FREE:
        config = PreferenceLossConfig(loss_type=loss_type)
        assert torch.equal(preference_loss(no_ref, config).loss_sum, preference_loss(PAIR, config).loss_sum)


@pytest.mark.parametrize("loss_type", sorted(set(PREFERENCE_LOSSES) - REFERENCE_FREE))
def test_missing_reference_is_an_error(loss_type):
    no_ref = PairLogps(PAIR.chosen, PAIR.rejected, PAIR.chosen_tokens, PAIR.rejected_tokens)
    with pytest.raises(ValueError, match="reference log-probs"):
        preference_loss(no_ref, PreferenceLossConfig(loss_type=loss_type))


def test_unknown_loss_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'kto'.*\['hinge', 'ipo', 'orpo', 'robust', 'sigmoid', 'simpo'\]"):
        PreferenceLossConfig(loss_type="kto")
    # A config changed after construction is caught by the dispatcher as well.
    config = PreferenceLossConfig()
    config.loss_type = "kto"
    with pytest.raises(ValueError, match="valid types"):
        preference_loss(PAIR, config)


def test_bad_parameters_are_errors():
    with pytest.raises(ValueError, match="beta"):
        PreferenceLossConfig(beta=0.0)
    with pytest.raises(ValueError, match="0.5"):
        PreferenceLossConfig(loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        PreferenceLossConfig(loss_type="sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match="ref_chosen"):
        PairLogps(PAIR.chosen, PAIR.rejected, PAIR.chosen_tokens, PAIR.rejected_tokens, torch.zeros(1, 1), None)


# ---- Parity with TRL 1.16, running TRL's own code (see trl_source.py) on the same log-probs -------------------------


def _completion_batch(num_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[2B, T] completion mask (row i < B chosen, row B + i rejected of pair i) and [2B, T - 1] per-token log-probs.

    Position 0 is a one-token prompt, then 1..7 completion tokens, then padding. Per-token log-prob j scores token
    j + 1 (zero where that token is not completion, as TRL's fused LM head leaves it).
    """
    generator = torch.Generator().manual_seed(seed)
    length = 9
    mask = torch.zeros(2 * num_pairs, length, dtype=torch.long)
    for row, n in enumerate(torch.randint(1, length - 1, (2 * num_pairs,), generator=generator).tolist()):
        mask[row, 1 : 1 + n] = 1
    per_token = -3.0 * torch.rand(2 * num_pairs, length - 1, generator=generator) * mask[:, 1:]
    return mask, per_token


def _pair_logps(per_token: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor | None) -> PairLogps:
    summed, counts = per_token.sum(1), mask.sum(1)
    chosen, rejected = summed.chunk(2)
    chosen_tokens, rejected_tokens = counts.chunk(2)
    ref_chosen, ref_rejected = ref.chunk(2) if ref is not None else (None, None)
    return PairLogps(chosen, rejected, chosen_tokens, rejected_tokens, ref_chosen, ref_rejected)


def _trl_dpo(loss_type: str, beta: float, label_smoothing: float, per_token, mask, ref):
    """DPOTrainer._compute_loss with precomputed reference log-probs and a model that returns ``per_token``."""
    fns = trl_functions("trainer/dpo_trainer.py", ["DPOTrainer._compute_loss"], namespace(math=math))
    trainer = stand_in(
        fns,
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        accelerator=IdentityAccelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    zeros = torch.zeros_like(per_token)
    outputs = types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    def model(**kwargs):
        return outputs

    ref_chosen, ref_rejected = ref.chunk(2)
    inputs = {
        "input_ids": torch.zeros_like(mask),
        "attention_mask": torch.ones_like(mask),
        "completion_mask": mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize(
    "loss_type,beta,label_smoothing",
    [("sigmoid", 0.1, 0.0), ("ipo", 0.1, 0.0), ("ipo", 0.5, 0.0), ("hinge", 0.3, 0.0), ("robust", 0.1, 0.2)],
)
def test_reference_based_types_match_trl_dpo_trainer(loss_type, beta, label_smoothing):
    num_pairs = 6
    mask, per_token = _completion_batch(num_pairs, seed=1)
    ref = per_token.sum(1) + torch.randn(2 * num_pairs, generator=torch.Generator().manual_seed(2))
    theirs_leaf = per_token.clone().requires_grad_()
    ours_leaf = per_token.clone().requires_grad_()

    trl_loss, trl_metrics = _trl_dpo(loss_type, beta, label_smoothing, theirs_leaf, mask, ref)
    config = PreferenceLossConfig(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
    output = preference_loss(_pair_logps(ours_leaf, mask, ref), config)
    metrics = output.metrics
    assert output.num_units.item() == num_pairs
    loss = output.loss_sum / output.num_units  # what the runner does with the summed loss

    assert math.isclose(loss.item(), trl_loss.item(), abs_tol=1e-6)
    trl_loss.backward()
    loss.backward()
    assert torch.allclose(ours_leaf.grad, theirs_leaf.grad, atol=1e-6)
    # Per pair as well, not only on average: TRL on each pair alone.
    for i in range(num_pairs):
        rows = [i, num_pairs + i]
        single, _ = _trl_dpo(loss_type, beta, label_smoothing, per_token[rows], mask[rows], ref[rows])
        ours = preference_loss(_pair_logps(per_token[rows], mask[rows], ref[rows]), config).loss_sum
        assert math.isclose(ours.item(), single.item(), abs_tol=1e-6)

    renamed = {"rewards/margin": "rewards/margins", "rewards/accuracy": "rewards/accuracies"}
    for name, value in metrics.items():
        assert math.isclose(value.item(), trl_metrics[renamed.get(name, name)], abs_tol=1e-6), name
    assert 0 < trl_metrics["rewards/accuracies"] < 1  # the batch has pairs on both sides


def _token_batch(num_pairs: int, seed: int, equal_chosen_lengths: bool):
    """A CPO/ORPO-style batch for a model that returns fixed logits; also our PairLogps from the same logits.

    Both sides are [B, T] with a one-token prompt (label -100) at position 0, then the completion, then padding.
    """
    generator = torch.Generator().manual_seed(seed)
    length, vocab = 8, 11
    lengths = torch.randint(2, length, (2 * num_pairs,), generator=generator)
    if equal_chosen_lengths:
        lengths[:num_pairs] = 5
    input_ids = torch.randint(1, vocab, (2 * num_pairs, length), generator=generator)
    positions = torch.arange(length)
    attention_mask = (positions < lengths[:, None]).long()
    labels = input_ids.masked_fill((attention_mask == 0) | (positions == 0), -100)
    logits = torch.randn(2 * num_pairs, length, vocab, generator=generator)

    batch = {}
    for side, rows in (("chosen", slice(0, num_pairs)), ("rejected", slice(num_pairs, None))):
        batch[f"{side}_input_ids"] = input_ids[rows]
        batch[f"{side}_attention_mask"] = attention_mask[rows]
        batch[f"{side}_labels"] = labels[rows]
    return batch, logits


def _our_logps(logits: torch.Tensor, batch: dict) -> PairLogps:
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])[:, 1:]
    mask = labels != -100
    per_token = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    summed, counts = (per_token * mask).sum(1), mask.sum(1)
    return PairLogps(*summed.chunk(2), *counts.chunk(2))


def _trl_preference_trainer(path: str, cls: str, loss_method: str, extra_globals: dict, **attributes):
    """A stand-in for TRL's CPO or ORPO trainer with its own batch, forward, log-prob and loss methods."""
    helpers = namespace(is_triton_available=lambda: False, is_torch_xla_available=lambda: False, **extra_globals)
    trl_functions("trainer/utils.py", ["selective_log_softmax"], helpers)
    trl_functions("experimental/utils.py", ["pad_to_length"], helpers)
    methods = ["concatenated_inputs", "concatenated_forward", "get_batch_logps", loss_method, "get_batch_loss_metrics"]
    fns = trl_functions(path, [f"{cls}.{name}" for name in methods], helpers)
    attributes.update(accelerator=IdentityAccelerator(), is_encoder_decoder=False, aux_loss_enabled=False)
    return stand_in(fns, **attributes)


def _fixed_logits_model(logits):
    def model(input_ids, attention_mask=None, **kwargs):
        return types.SimpleNamespace(logits=logits)

    return model


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo_trainer(label_smoothing):
    num_pairs, beta, gamma = 6, 2.0, 0.5
    batch, logits = _token_batch(num_pairs, seed=3, equal_chosen_lengths=False)
    # TRL's SimPO is CPOTrainer(loss_type="simpo"); cpo_alpha=0 drops CPO's extra NLL term, leaving pure SimPO.
    trainer = _trl_preference_trainer(
        "experimental/cpo/cpo_trainer.py",
        "CPOTrainer",
        "cpo_loss",
        {},
        pad_token_id=0,
        loss_type="simpo",
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=gamma,
        cpo_alpha=0.0,
        alpha=0.0,
    )
    theirs_leaf, ours_leaf = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(_fixed_logits_model(theirs_leaf), batch)

    config = PreferenceLossConfig("simpo", beta=beta, label_smoothing=label_smoothing, simpo_gamma=gamma)
    output = preference_loss(_our_logps(ours_leaf, batch), config)
    metrics = output.metrics
    loss = output.loss_sum / output.num_units

    assert math.isclose(loss.item(), trl_loss.item(), abs_tol=1e-6)
    trl_loss.backward()
    loss.backward()
    assert torch.allclose(ours_leaf.grad, theirs_leaf.grad, atol=1e-6)
    renamed = {"rewards/margin": "rewards/margins", "rewards/accuracy": "rewards/accuracies"}
    for name, value in metrics.items():
        assert math.isclose(value.item(), trl_metrics[renamed.get(name, name)], abs_tol=1e-6), name
    assert 0 < trl_metrics["rewards/accuracies"] < 1


def test_orpo_matches_trl_orpo_trainer():
    num_pairs, beta = 6, 0.25
    # TRL's NLL term is one token-level mean over the whole chosen batch, prompt included (beyond its first token);
    # ours is a mean of per-completion means. Equal chosen lengths and a one-token prompt make the two the same.
    batch, logits = _token_batch(num_pairs, seed=4, equal_chosen_lengths=True)
    log1mexp = trl_functions("experimental/orpo/orpo_trainer.py", ["log1mexp"], namespace())["log1mexp"]
    trainer = _trl_preference_trainer(
        "experimental/orpo/orpo_trainer.py",
        "ORPOTrainer",
        "odds_ratio_loss",
        {"log1mexp": log1mexp},
        padding_value=0,
        beta=beta,
    )
    theirs_leaf, ours_leaf = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(_fixed_logits_model(theirs_leaf), batch)

    output = preference_loss(_our_logps(ours_leaf, batch), PreferenceLossConfig("orpo", beta=beta))
    metrics = output.metrics
    loss = output.loss_sum / output.num_units

    assert math.isclose(loss.item(), trl_loss.item(), abs_tol=1e-6)
    trl_loss.backward()
    loss.backward()
    assert torch.allclose(ours_leaf.grad, theirs_leaf.grad, atol=1e-6)
    renamed = {"rewards/margin": "rewards/margins", "rewards/accuracy": "rewards/accuracies"}
    for name, value in metrics.items():
        assert math.isclose(value.item(), trl_metrics[renamed.get(name, name)], abs_tol=1e-6), name
    assert 0 < trl_metrics["rewards/accuracies"] < 1
