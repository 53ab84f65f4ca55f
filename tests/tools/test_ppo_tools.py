"""PPO with tools: rollouts call the calculator, the tool's messages get no KL penalty, value target or advantage,
and the turn that made the call is trained on (GAE steps over the tool's tokens: tests/losses/test_advantages.py)."""

import json

import torch

from tests.tools import scripted
from tunekit.config import load_config
from tunekit.losses.sft import IGNORE_INDEX
from tunekit.recipes import ppo
from tunekit.rl import tool_rollout
from tunekit.rl.rollout import generate_turn
from tunekit.train.experience import EXPERIENCE_FILE


def test_ppo_with_tools_trains_both_turns_and_never_the_tools_tokens(tmp_path, monkeypatch):
    monkeypatch.setattr(tool_rollout, "generate_turn", scripted.scripted(generate_turn))
    out = tmp_path / "ppo"
    overrides = [
        f"output_dir={out}",
        *scripted.TINY_TOOL_RUN,
        "reward_model=null",
        "rewards=[{name: 'reward_models/tools.py:final_answer_correct'}]",
        "tools.use=[{name: calculator}]",
        "ppo.epochs=1",
        "ppo.minibatches=2",
        "max_steps=2",
        "train.save_every=1",
        "train.keep_checkpoints=0",
        "train.eval_every=2",
        "sample_every=1",
    ]
    result = ppo.run(load_config(ppo.PPOConfig, None, overrides))
    trained = [r for r in result.history if "loss" in r]
    assert trained[0]["tool_use_fraction"] == 0.5  # the script calls in every other row
    assert "eval/greedy/rewards/reward_models/tools.py:final_answer_correct" in result.history[-1]
    calls = [c for line in (out / "samples.jsonl").read_text().splitlines() for c in json.loads(line)["tool_calls"]]
    assert calls and all(c["name"] == "calculator" and c["ok"] for c in calls)

    # The experience saved between the two minibatches of step 0.
    (experience,) = torch.load(out / "checkpoints" / "step-1" / EXPERIENCE_FILE, weights_only=True)[0]
    policy = experience["labels"][:, 1:] != IGNORE_INDEX  # [N, T - 1]: the policy's own tokens
    attended = experience["attention_mask"][:, 1:].bool()
    called = 0
    for row in range(policy.shape[0]):
        where = policy[row].nonzero()
        between = attended[row].clone()
        between[: where[0]] = False
        between[where[-1] :] = False
        tool_tokens = between & ~policy[row]
        if not tool_tokens.any():
            continue
        called += 1
        for key in ("advantages", "returns", "old_values"):
            assert torch.all(experience[key][row][~policy[row]] == 0), key
        # The calling turn (the policy's tokens before the tool's message) has advantages: it is trained on.
        first_turn = policy[row] & (torch.arange(policy.shape[1]) < tool_tokens.nonzero()[0])
        assert experience["advantages"][row][first_turn].abs().sum() > 0
    assert called == policy.shape[0] // 2
