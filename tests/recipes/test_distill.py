"""The distill recipe end to end on the embedded models: the student moves towards its teacher on held-out data,
on-policy steps train on the student's own samples, a run resumes exactly (teacher reloaded, not checkpointed),
SFT alone through it is the sft recipe's run, and padding-free batches give the padded batches' loss."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tunekit.config import load_config
from tunekit.data.collate import collate_examples
from tunekit.data.sft import Example
from tunekit.losses.sft import IGNORE_INDEX
from tunekit.models.load import ModelConfig, load_model, load_tokenizer
from tunekit.recipes.distill import DistillConfig, run
from tunekit.recipes.sft import SFTConfig
from tunekit.recipes.sft import run as run_sft
from tunekit.rl.on_policy_distill import DistillHooks, OnPolicyConfig, batch_prompts

QUICK = [
    "teacher.path=tiny-llama",
    "data.synthetic_size=80",
    "data.eval_fraction=0.1",
    "max_eval_prompts=4",
    "on_policy.max_new_tokens=6",
    "train.micro_batch_size=4",
    "train.progress=false",
]


@pytest.fixture(autouse=True)
def no_charts(monkeypatch):
    monkeypatch.setattr("tunekit.train.runner.write_run_charts", lambda run_dir: [])


def distill(out, *overrides):
    return run(load_config(DistillConfig, None, [f"output_dir={out}", *QUICK, *overrides]))


def test_a_run_moves_the_student_towards_its_teacher_and_resumes_exactly(tmp_path):
    # Seed 7 with fraction 0.5 samples at steps 2 and 4 and not at 1 and 3 (checked below): both kinds of step fall
    # on each side of the checkpoint the second run resumes from.
    common = ["seed=7", "on_policy.fraction=0.5", "max_steps=4", "train.save_every=2", "train.keep_checkpoints=0"]
    common += ["train.eval_every=4", "loss.divergence=jsd"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    result = distill(whole, *common)
    trained = [r for r in result.history if "loss" in r]
    assert [r["on_policy"] for r in trained] == [0.0, 1.0, 0.0, 1.0]
    assert all(r["completion_length"] <= 6 for r in trained if r["on_policy"])
    evals = [r for r in result.history if "eval/kl" in r]
    assert [r["step"] for r in evals] == [0, 4]
    assert evals[-1]["eval/kl"] < evals[0]["eval/kl"]
    assert "eval/greedy/task/math_correct" in evals[-1]
    assert not (whole / "checkpoints" / "step-2" / "teacher").exists()

    distill(resumed, *common, f"resume={whole / 'checkpoints' / 'step-2'}")
    expected = load_file(str(whole / "final" / "model.safetensors"))
    got = load_file(str(resumed / "final" / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    later = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip([r for r in later if "loss" in r], trained[2:], strict=True):
        assert (a["step"], a["loss"], a["kl"]) == (b["step"], b["loss"], b["kl"])


def test_sft_weight_one_trains_exactly_as_the_sft_recipe(tmp_path):
    """The loss's units and normalisation are SFT's: with the divergence weighted 0, the same student, data and
    steps end at the same weights."""
    common = ["model.path=tiny-llama-small", "data.synthetic_size=40", "data.eval_fraction=0", "max_steps=3"]
    common += ["train.micro_batch_size=4", "train.grad_accum_steps=2", "train.progress=false", "train.lr=0.1"]
    common += ["train.optimizer=sgd"]  # AdamW's first steps would amplify rounding differences of order 1e-7
    distill(tmp_path / "distill", *common, "loss.sft_weight=1", "task_metric=null")
    run_sft(load_config(SFTConfig, None, [f"output_dir={tmp_path / 'sft'}", *common, "model.adapter.method=full"]))
    a = [json.loads(line)["loss"] for line in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert a == pytest.approx(b, abs=1e-6)
    w1 = load_file(str(tmp_path / "distill" / "final" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "sft" / "final" / "model.safetensors"))
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], atol=1e-6, rtol=0)


def test_padding_free_batches_give_the_padded_batches_loss(tmp_path):
    common = ["max_steps=2", "train.eval_every=0", "task_metric=null", "train.optimizer=sgd"]
    fast = distill(tmp_path / "fast", *common)
    plain = distill(tmp_path / "plain", *common, "model.fast_paths.enabled=false")
    assert len(fast.history) == 2
    for a, b in zip(fast.history, plain.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-5)


def test_an_on_policy_batch_keeps_each_prompt_and_trains_only_the_sampled_tokens(tokenizer, tiny_llama_path):
    model = load_model(ModelConfig(path=tiny_llama_path))
    prompts = [tokenizer("Question: 1 + 2?\nAnswer:")["input_ids"], tokenizer("Q: 7?\nA:")["input_ids"]]
    examples = [Example(p + [5, 6, 7], [IGNORE_INDEX] * len(p) + [5, 6, 7], i) for i, p in enumerate(prompts)]

    def collate(items):
        return collate_examples(items, pad_id=tokenizer.pad_token_id)

    batch = collate(examples)
    assert batch_prompts(batch) == prompts
    hooks = DistillHooks(OnPolicyConfig(fraction=1.0, max_new_tokens=4), tokenizer, collate, 0, [], None, 2)
    (sampled,) = hooks.prepare(model, [batch], step=0)
    assert sampled["metrics"]["on_policy"] == 1.0
    assert batch_prompts(sampled) == prompts
    for row, prompt in enumerate(prompts):
        labels = sampled["labels"][row]
        trained = labels != IGNORE_INDEX
        assert not trained[: len(prompt)].any()
        n = int(trained.sum())
        assert 1 <= n <= 4  # the sampled completion, its end token included
        assert torch.equal(sampled["input_ids"][row][len(prompt) : len(prompt) + n], labels[trained])
    assert sampled["num_items"] == sum(int((sampled["labels"][r] != IGNORE_INDEX).sum()) for r in range(2))


def test_on_policy_steps_follow_the_fraction_and_the_seed():
    def hooks(fraction, seed=0):
        return DistillHooks(OnPolicyConfig(fraction=fraction), None, None, seed, [], None, 1)

    assert not any(hooks(0.0).is_on_policy(s) for s in range(50))
    assert all(hooks(1.0).is_on_policy(s) for s in range(50))
    chosen = [hooks(0.3).is_on_policy(s) for s in range(2000)]
    assert 0.25 < sum(chosen) / len(chosen) < 0.35
    assert chosen == [hooks(0.3).is_on_policy(s) for s in range(2000)]
    assert chosen != [hooks(0.3, seed=1).is_on_policy(s) for s in range(2000)]


def test_a_teacher_with_padded_logits_is_compared_over_the_shared_tokens(tmp_path, tiny_llama_path):
    """Output layers padded past the tokenizer (as many hub models are) are no vocabulary mismatch."""
    from tunekit.models.teacher import shared_logit_width

    student = load_model(ModelConfig(path=tiny_llama_path))
    teacher = load_model(ModelConfig(path=tiny_llama_path))
    vocabulary = len(load_tokenizer(tiny_llama_path))
    teacher.resize_token_embeddings(vocabulary + 64)
    assert shared_logit_width(teacher, student, vocabulary) == vocabulary


def test_a_teacher_given_as_an_sft_runs_adapter_is_merged_and_may_be_stored_in_4bit(tmp_path):
    """The student starts as the same merged SFT run: a teacher loaded right has zero KL to it at step 0, and a
    4-bit teacher only its quantization error."""
    sft = ["model.path=tiny-llama", "data.synthetic_size=64", "data.eval_fraction=0", "max_steps=4"]
    sft += ["train.lr=1e-2", "train.progress=false", f"output_dir={tmp_path / 'sft'}"]
    run_sft(load_config(SFTConfig, None, sft))
    adapter = tmp_path / "sft" / "final"
    assert (adapter / "adapter_config.json").is_file()
    common = [f"model.path={adapter}", "model.adapter.method=lora", "max_steps=1", "train.eval_every=1"]
    common += ["task_metric=null", f"teacher.path={adapter}"]
    # The SFT run moved the weights, so a teacher that left its adapter out would not match the student.
    assert any(
        t.abs().max() > 1e-3 for n, t in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in n
    )
    exact = distill(tmp_path / "fp32", *common)
    assert exact.history[0]["eval/kl"] < 1e-5
    quantized = distill(tmp_path / "4bit", *common, "teacher.quantization=4bit")
    assert exact.history[0]["eval/kl"] < quantized.history[0]["eval/kl"] < 0.1
