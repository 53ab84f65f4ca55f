"""Multi-turn tool rollouts: the trajectory is the template's rendering of the conversation, only the policy's own
tokens are trained (the tool's tokens carry no gradient, in the loss or the KL), failures reach the model as
messages, and the GRPO recipe with tools resumes exactly between the passes of a batch."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.tools import scripted
from tunekit.config import load_config
from tunekit.data.formats import render_chat
from tunekit.data.prompts import PromptExample
from tunekit.errors import ConfigError, DataError
from tunekit.losses.sft import IGNORE_INDEX
from tunekit.models.load import ModelConfig, load_model, load_tokenizer
from tunekit.recipes.grpo import GRPOConfig, run
from tunekit.rl import tool_rollout
from tunekit.rl.grpo import GRPOLossConfig, GRPOTrainer
from tunekit.rl.rewards import RewardFunctionError
from tunekit.rl.rollout import SamplingConfig, generate_turn
from tunekit.rl.tool_rollout import ToolRollouts
from tunekit.tools.registry import ToolsConfig, ToolSpec, load_tools

QUESTION = [{"role": "user", "content": "What is 1234 + 4321?"}]


@pytest.fixture(scope="module")
def policy(tiny_llama_path):
    tokenizer = load_tokenizer(tiny_llama_path)
    model = load_model(ModelConfig(path=tiny_llama_path))
    return model, tokenizer


def tool_rollout_of(policy, first_turns, max_turns=3, group=2, max_new_tokens=4, monkeypatch=None):
    model, tokenizer = policy
    config = ToolsConfig(use=[ToolSpec(name="calculator")], max_turns=max_turns)
    tools = load_tools(config.use)
    schemas = [t.schema for t in tools]
    text = render_chat(QUESTION, tokenizer, add_generation_prompt=True, tools=schemas)
    prompt = PromptExample(text, tokenizer(text, add_special_tokens=False)["input_ids"], {"answer": "5555"}, 7)
    monkeypatch.setattr(scripted, "FIRST_TURNS", first_turns)
    monkeypatch.setattr(tool_rollout, "generate_turn", scripted.scripted(generate_turn))
    sampling = SamplingConfig(num_generations=group, max_new_tokens=max_new_tokens, temperature=0)
    torch.manual_seed(0)
    return ToolRollouts(config, tools, tokenizer)(model, tokenizer, [prompt], sampling), schemas


def test_the_trajectory_is_the_templates_conversation_and_only_the_policys_tokens_are_labelled(policy, monkeypatch):
    call = scripted.CALL % "1234 + 4321"
    rollout, schemas = tool_rollout_of(policy, [call, "#### 5555"], monkeypatch=monkeypatch)
    model, tokenizer = policy
    row = 0  # called the calculator, then answered with the model's own greedy tokens
    ids = rollout.input_ids[row][rollout.attention_mask[row].bool()]
    labelled = rollout.labels[row][rollout.labels[row] != IGNORE_INDEX]
    reply = rollout.columns["final_response"][row]
    conversation = [*QUESTION, {"role": "assistant", "content": call}, {"role": "tool", "content": "5555"}]
    expected = render_chat(conversation, tokenizer, add_generation_prompt=True, tools=schemas)
    assert tokenizer.decode(ids, skip_special_tokens=False).startswith(expected)
    assert tokenizer.decode(labelled, skip_special_tokens=False).startswith(call + "</s>")
    assert "5555" not in tokenizer.decode(labelled, skip_special_tokens=False).replace(call, "")[: len("</s>") + 4]
    assert rollout.columns["tool_calls"][row] == [
        {"name": "calculator", "arguments": {"expression": "1234 + 4321"}, "output": "5555", "ok": True, "error": None}
    ]
    assert rollout.completions[row].startswith(call) and rollout.completions[row].endswith(reply)
    assert rollout.completion_lengths[row] == len(labelled)
    # Row 1 answered at once: one turn, no call, nothing masked after the prompt.
    assert rollout.columns["tool_calls"][1] == [] and rollout.columns["final_response"][1] == "#### 5555"


def test_a_malformed_call_is_answered_with_an_error_and_turns_stop_at_max_turns(policy, monkeypatch):
    broken = "<tool_call>{oops}</tool_call>"
    rollout, _ = tool_rollout_of(policy, [broken], max_turns=1, group=1, monkeypatch=monkeypatch)
    assert rollout.columns["tool_calls"][0] == []  # one turn allowed: the call is never run
    rollout, _ = tool_rollout_of(policy, [broken], max_turns=2, group=1, monkeypatch=monkeypatch)
    (record,) = rollout.columns["tool_calls"][0]
    assert not record["ok"] and record["error"] == "malformed"
    assert "<|tool|>\nerror: the tool call is not valid JSON" in rollout.completions[0]


def test_tool_tokens_carry_no_gradient_in_the_loss_or_the_kl(policy, monkeypatch):
    model, tokenizer = policy
    rollout, _ = tool_rollout_of(policy, [scripted.CALL % "1234 + 4321"], group=2, monkeypatch=monkeypatch)
    batch = rollout.batch()
    batch["advantages"] = torch.tensor([1.0, -1.0])
    batch["num_items"] = torch.tensor(2)
    batch["metrics"] = {}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    batch["ref_logps"] = torch.randn(logits.shape[0], logits.shape[1] - 1) * 0.1 - 5  # a KL term that pulls
    trainer = GRPOTrainer(
        GRPOLossConfig(kl_beta=0.5), SamplingConfig(num_generations=2, max_new_tokens=4), seed=0, eval_batch_size=2,
        tokenizer=tokenizer, reference=None, rewards=[], samples=None,
    )  # fmt: skip
    grads = {}

    def keep_grad(grad):
        grads["g"] = grad

    def on_logits(module, inputs, out):
        out.register_hook(keep_grad)  # returns None: the logits themselves are left as they are

    handle = model.lm_head.register_forward_hook(on_logits)
    try:
        loss, _ = trainer.step(model, batch)
        loss.backward()
    finally:
        handle.remove()
        model.zero_grad()
    per_position = grads["g"].abs().sum(-1)  # [N, L]: the logits at position t predict token t + 1
    predicts_label = torch.zeros_like(per_position, dtype=torch.bool)
    predicts_label[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX
    tool_tokens = batch["attention_mask"].bool() & (batch["labels"] == IGNORE_INDEX)
    tool_tokens[:, : rollout.input_ids.shape[1] - rollout.labels.shape[1]] = False
    assert bool(tool_tokens[0].any())  # row 0's trajectory holds the calculator's answer
    assert torch.all(per_position[~predicts_label] == 0)
    assert torch.all(per_position[predicts_label] > 0)


def grpo_tools(out, *overrides):
    fast = [
        *scripted.TINY_TOOL_RUN,
        "tools.use=[{name: calculator, cost: 0.25}, {name: python}]",
        "rewards=[{name: 'reward_models/tools.py:final_answer_correct'}, "
        "{name: length_penalty, kwargs: {target_chars: 8}}]",
        "sample_every=1",
    ]
    return load_config(GRPOConfig, None, [f"output_dir={out}", *fast, *overrides])


def test_grpo_with_tools_logs_calls_and_resumes_exactly_between_the_passes_of_a_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(tool_rollout, "generate_turn", scripted.scripted(generate_turn))
    common = ["loss.passes=2", "max_steps=4", "train.save_every=1", "train.keep_checkpoints=0", "train.lr=1e-2"]
    common += ["train.eval_every=0", "train.micro_batch_size=1", "data.synthetic_size=4"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    result = run(grpo_tools(whole, *common))
    train_line = next(r for r in result.history if "loss" in r)
    assert train_line["tool_calls"] == 0.5 and train_line["tool_use_fraction"] == 0.5
    assert train_line["rewards/reward_models/tools.py:call_cost"] == -0.125  # half the rows call, at 0.25 a call
    samples = [json.loads(line) for line in (whole / "samples.jsonl").read_text().splitlines()]
    calls = [call for line in samples for call in line["tool_calls"]]
    assert calls and all(call["name"] == "calculator" and call["ok"] for call in calls)
    assert (whole / "checkpoints" / "step-3" / "experience.pt").is_file()  # between the passes of a batch
    run(grpo_tools(resumed, *common, f"resume={whole / 'checkpoints' / 'step-3'}"))
    expected = load_file(str(whole / "final" / "adapter_model.safetensors"))
    got = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)


def test_a_failing_call_is_logged_at_every_step(tmp_path, monkeypatch):
    monkeypatch.setattr(
        scripted, "FIRST_TURNS", ['<tool_call>{"name": "python", "arguments": {"code": "1/0"}}</tool_call>', None]
    )
    monkeypatch.setattr(tool_rollout, "generate_turn", scripted.scripted(generate_turn))
    out = tmp_path / "grpo"
    result = run(grpo_tools(out, "max_steps=2", "sample_every=0", "train.eval_every=2"))
    assert "eval/greedy/task/math_correct" in result.history[-1]  # held-out rollouts call tools too
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({line["step"] for line in lines}) == [0, 1]
    assert all(line["tool_calls"][0]["error"] == "raised" for line in lines)
    assert "ZeroDivisionError: division by zero" in lines[0]["tool_calls"][0]["output"]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["data.path=synthetic"], DataError, "a run with tools needs chat prompts"),
        (["tools.use=[{name: calculater}]"], ConfigError, "unknown tool 'calculater'"),
        (["tools.max_turns=0"], ConfigError, "tools.max_turns must be at least 1"),
        (["rewards=[{name: 'STRICT'}]"], RewardFunctionError, "cannot be called with the keyword arguments"),
    ],
)
def test_tool_mistakes_are_reported_before_training(tmp_path, overrides, error, message):
    # A reward without **columns takes the data's answer column but not the trajectory's columns.
    strict = tmp_path / "strict.py"
    strict.write_text("def score(prompts, completions, answer):\n    return [0.0] * len(completions)\n")
    overrides = [o.replace("STRICT", f"{strict}:score") for o in overrides]
    with pytest.raises(error, match=message):
        run(grpo_tools(tmp_path / "grpo", *overrides))
    assert not (tmp_path / "grpo" / "metrics.jsonl").exists()
