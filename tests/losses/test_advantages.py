import math
import types
from collections import defaultdict

import pytest
import torch

from tunekit.losses.advantages import equal_reward_groups, gae, group_advantages


def test_group_advantages_match_hand_derived_values():
    # Two prompts, four completions each. Group 1: mean 0.5, deviations +-0.5, unbiased variance
    # 4 * 0.25 / (4 - 1) = 1/3, std 0.57735; 0.5 / (0.57735 + 1e-4) = 0.86588. Group 2 is flat: all zero.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    scaled = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    expected = torch.tensor([scaled, -scaled, -scaled, scaled, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(group_advantages(rewards, 4), expected, atol=1e-6)
    # Dr. GRPO: centred, not scaled.
    expected_unscaled = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(group_advantages(rewards, 4, scale_by_std=False), expected_unscaled, atol=1e-7)


def test_group_of_one_has_zero_advantage_and_bad_shapes_are_refused():
    assert torch.equal(group_advantages(torch.tensor([3.0, -1.0]), 1), torch.zeros(2))
    with pytest.raises(ValueError, match="whole groups"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="whole groups"):
        equal_reward_groups(torch.zeros(2, 4), 4)


def test_equal_reward_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.7])
    assert equal_reward_groups(rewards, 3).tolist() == [True, False, False]
    assert equal_reward_groups(torch.tensor([0.1 + 0.2, 0.3]), 2).tolist() == [True]


def _trl_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str) -> torch.Tensor:
    """Run TRL 1.16's GRPOTrainer._generate_and_score_completions on a stand-in trainer.

    Generation and reward functions are replaced by stubs that hand back fixed token ids and ``rewards``; the
    method's own code (padding, reward aggregation, group mean and std, advantage, slicing) runs unchanged.
    """
    from trl.trainer.grpo_trainer import GRPOTrainer

    n = rewards.numel()
    token_ids = [[5, 6]] * n
    ns = types.SimpleNamespace
    trainer = ns(
        accelerator=ns(device=torch.device("cpu"), gather=lambda t: t, process_index=0, num_processes=1),
        model=ns(training=True, is_gradient_checkpointing=False),
        args=ns(
            per_device_train_batch_size=n,
            gradient_checkpointing_kwargs=None,
            steps_per_generation=1,
            gradient_accumulation_steps=1,
        ),
        environment_factories=None,
        tools=None,
        environments=None,
        # prompt ids, completion ids, tool mask, completions, sampling logps, extra fields, images, tool images
        _generate=lambda prompts: (token_ids, token_ids, None, ["c"] * n, None, {}, None, None),
        _calculate_rewards=lambda inputs, prompts, completions, ids: rewards[:, None].clone(),
        _tokenizer=ns(pad_token_id=0),
        pad_to_multiple_of=None,
        mask_truncated_completions=False,
        num_iterations=1,
        use_vllm=False,
        beta=0.0,
        num_generations=group_size,
        multi_objective_aggregation="sum_then_normalize",
        reward_weights=torch.ones(1),
        scale_rewards=scale_rewards,
        reward_func_names=["reward"],
        _metrics={"train": defaultdict(list)},
        _logs={
            "prompt": [],
            "completion": [],
            "rewards": defaultdict(list),
            "advantages": [],
            "extra": defaultdict(list),
        },
        _pending_extra_logs={},
        _pending_metrics={},
        log_multimodal=False,
    )
    return GRPOTrainer._generate_and_score_completions(trainer, [{"prompt": "p"}] * n)["advantages"]


@pytest.mark.parametrize("group_size", [1, 4, 8])
def test_group_advantages_match_trl_grpo_trainer(group_size):
    torch.manual_seed(0)
    rewards = torch.randn(6 * group_size)
    if group_size > 1:
        rewards[:group_size] = 1.0  # a flat group: std 0, so only eps stands between TRL and a division by zero
        rewards[group_size : 2 * group_size] = torch.tensor([1.0, 0.0]).repeat(group_size // 2)  # binary rewards
    for scale_by_std, scale_rewards in [(True, "group"), (False, "none")]:
        ours = group_advantages(rewards, group_size, scale_by_std=scale_by_std)
        theirs = _trl_advantages(rewards, group_size, scale_rewards)
        assert torch.allclose(ours, theirs, atol=1e-6), (scale_rewards, ours, theirs)


def test_gae_matches_hand_derived_values():
    # One completion of 2 tokens then a padded position whose reward and value are garbage. gamma = lam = 0.5.
    # t=1 (last token): delta = 1 + 0.5 * 0 - 2 = -1; A = -1; R = A + V = 1.
    # t=0: delta = 0 + 0.5 * 2 - 1 = 0; A = 0 + 0.5 * 0.5 * (-1) = -0.25; R = 0.75.
    rewards = torch.tensor([[0.0, 1.0, 9.0]])
    values = torch.tensor([[1.0, 2.0, 7.0]])
    mask = torch.tensor([[1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert torch.allclose(advantages, torch.tensor([[-0.25, -1.0, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.75, 1.0, 0.0]]))


def _reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Textbook GAE over one unpadded episode, one scalar at a time."""
    advantages = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_matches_a_reference_loop_on_ragged_batches(gamma, lam):
    torch.manual_seed(0)
    batch, width = 7, 11
    rewards, values = torch.randn(batch, width), torch.randn(batch, width)
    lengths = [0, 1, 5, 11, 3, 10, 7]  # includes an empty row and a full one
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for row, length in enumerate(lengths):
        expected = torch.tensor(
            _reference_gae(rewards[row, :length].tolist(), values[row, :length].tolist(), gamma, lam)
            + [0.0] * (width - length)
        )
        assert torch.allclose(advantages[row], expected, atol=1e-5), row
        assert torch.allclose(returns[row], (expected + values[row]) * mask[row], atol=1e-5), row


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5)])
def test_gae_steps_over_tokens_between_turns(gamma, lam):
    # A two-turn rollout: the policy's call (3 tokens), the tool's message (2 tokens, not the policy's), the reply
    # (2 tokens), padding. The estimate over the policy's 5 tokens is GAE over them as one episode, so the first
    # turn's tokens are credited with the reply's reward; the tool message and the padding get 0.
    torch.manual_seed(1)
    rewards, values = torch.randn(2, 9), torch.randn(2, 9)
    mask = torch.tensor([[1, 1, 1, 0, 0, 1, 1, 0, 0], [1, 0, 1, 0, 1, 0, 1, 1, 1]])
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for row in range(2):
        kept = mask[row].bool()
        expected = torch.zeros(9)
        expected[kept] = torch.tensor(
            _reference_gae(rewards[row, kept].tolist(), values[row, kept].tolist(), gamma, lam)
        )
        assert torch.allclose(advantages[row], expected, atol=1e-5), row
        assert torch.allclose(returns[row], (expected + values[row]) * mask[row], atol=1e-5), row
    # The first turn's last token sees the reply's first token's value, not a zero.
    assert advantages[0, 2] != pytest.approx(rewards[0, 2] - values[0, 2])
