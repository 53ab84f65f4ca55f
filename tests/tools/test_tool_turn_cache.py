"""Multi-turn tool rollouts carry the KV cache from turn to turn: the trajectories equal those of rollouts whose
later turns read their whole context again."""

import torch

from tests.tools import scripted
from tunekit.data.formats import render_chat
from tunekit.data.prompts import PromptExample
from tunekit.fast import FastPathConfig, enable_fast_paths
from tunekit.fast.sampling import Sampler
from tunekit.models.load import ModelConfig, load_model, load_tokenizer
from tunekit.models.tiny import tiny_model_path
from tunekit.rl import rollout as rollout_module
from tunekit.rl import tool_rollout
from tunekit.rl.rollout import SamplingConfig, generate_turn
from tunekit.tools.registry import ToolsConfig, ToolSpec, load_tools

QUESTIONS = ["What is (12*34)?", "What is (56+78)?"]


class Forcing:
    """Greedy; in the first turn of a rollout, every even row writes ``script`` (a calculator call and EOS) instead,
    so that the cache holds the call the trajectory holds."""

    def __init__(self, script):
        self.script, self.step = script, 0

    def __call__(self, logits):
        tokens = logits.argmax(dim=-1)
        if self.step < len(self.script):
            tokens[::2] = self.script[self.step]
        self.step += 1
        return tokens


def rollouts(monkeypatch, path, reuse, sliding_window=None):
    tokenizer = load_tokenizer(path)
    model = load_model(ModelConfig(path=path)).eval()
    if sliding_window is not None:
        model.config.sliding_window = sliding_window
    torch.manual_seed(0)
    with torch.no_grad():  # weights moved off their init, so that greedy text depends on what came before
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    assert enable_fast_paths(model, FastPathConfig(), device="cpu").uses("own-decoder")
    config = ToolsConfig(use=[ToolSpec(name="calculator")], max_turns=3)
    tools = load_tools(config.use)
    schemas = [t.schema for t in tools]
    script = tokenizer(scripted.CALL % "12*34", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    made = []

    def sampler(temperature, top_k, top_p):  # the first sampler of the rollout is the first turn's
        made.append(None)
        return Forcing(script) if len(made) == 1 else Sampler(0)

    monkeypatch.setattr(rollout_module, "Sampler", sampler)
    if not reuse:  # each later turn reads its whole context

        def without_context(model, tokenizer, prompts, sampling, past=None, keep_context=False):
            assert past is None
            return generate_turn(model, tokenizer, prompts, sampling)[0], None

        monkeypatch.setattr(tool_rollout, "generate_turn", without_context)
    prompts = []
    for i, question in enumerate(QUESTIONS):
        text = render_chat(
            [{"role": "user", "content": question}], tokenizer, add_generation_prompt=True, tools=schemas
        )
        prompts.append(PromptExample(text, tokenizer(text, add_special_tokens=False)["input_ids"], {}, i))
    sampling = SamplingConfig(num_generations=2, max_new_tokens=len(script) + 4, temperature=0)
    return tool_rollout.ToolRollouts(config, tools, tokenizer)(model, tokenizer, prompts, sampling)


def test_later_turns_that_go_on_from_the_cache_equal_turns_that_read_everything_again(monkeypatch, tiny_llama_path):
    cached = rollouts(monkeypatch, tiny_llama_path, reuse=True)
    monkeypatch.undo()
    again = rollouts(monkeypatch, tiny_llama_path, reuse=False)
    for row in (0, 2):  # the forced rows: a call, the calculator's answer, then the model's own greedy turns
        assert cached.columns["tool_calls"][row][0]["output"] == "408"
        assert len(cached.completions[row]) > len(scripted.CALL % "12*34") + 10
    assert cached.completions == again.completions
    for name in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(getattr(cached, name), getattr(again, name)), name


def test_a_later_turn_past_the_sliding_window_reads_its_whole_context_through_generate(monkeypatch, capsys):
    # A window of 130 covers the first turn (about 110 positions) but not the second: that turn cannot go on from the
    # cache on tunekit's decoder, which does not model the window, and is read again through generate instead.
    path = str(tiny_model_path("tiny-mistral"))
    cached = rollouts(monkeypatch, path, reuse=True, sliding_window=130)
    monkeypatch.undo()
    again = rollouts(monkeypatch, path, reuse=False, sliding_window=130)
    assert cached.columns["tool_calls"][0][0]["output"] == "408"
    assert "the sliding window (130) is shorter" in capsys.readouterr().err
    assert cached.completions == again.completions
    assert torch.equal(cached.input_ids, again.input_ids)
