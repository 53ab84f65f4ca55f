"""GRPO recipe: the loop runs on the tiny model with every option, and mistakes are reported before training."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tunekit.config import load_config
from tunekit.errors import ConfigError, DataError
from tunekit.recipes.grpo import GRPOConfig, run
from tunekit.rl.rewards import RewardFunctionError

FAST = [
    "model.path=tiny-llama",
    "model.adapter.method=lora",
    "train.progress=false",
    "data.synthetic_size=16",
    "data.max_eval_examples=4",
    "train.micro_batch_size=2",
    "sampling.num_generations=4",
    "sampling.max_new_tokens=6",
    "sample_every=1",
]


def grpo_config(out, *overrides):
    return load_config(GRPOConfig, None, [f"output_dir={out}", *FAST, *overrides])


def test_loop_runs_with_several_passes_kl_and_clip_higher(tmp_path):
    out = tmp_path / "grpo"
    result = run(
        grpo_config(
            out,
            "max_steps=4",
            "loss.passes=2",
            "loss.kl_beta=0.05",
            "loss.skip_equal_groups=true",
            "loss.truncated=penalize",
            "train.eval_every=2",
            "rewards=[{name: math_correct}, {name: format, weight: 0.5}, {name: length_penalty, "
            "weight: 0.1, kwargs: {target_chars: 4}}]",
        )
    )
    assert result.step == 4
    train_lines = [r for r in result.history if "loss" in r]
    for key in (
        "reward",
        "reward_std",
        "rewards/math_correct",
        "rewards/format",
        "completion_length",
        "truncated_fraction",
        "clip_fraction",
        "kl",
    ):
        assert key in train_lines[-1], key
    evals = [r for r in result.history if "eval/reward" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert "eval/greedy/reward" in evals[-1]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {"step", "prompt", "completion", "reward"} <= set(samples[0])
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_full_fine_tuning_under_bf16_autocast_samples_and_trains(tmp_path):
    # The decoding loop's attention met float32 queries and keys with bf16 values (the prefill's cache) and raised.
    result = run(
        grpo_config(tmp_path / "grpo", "model.adapter.method=full", "train.mixed_precision=bf16", "max_steps=2")
    )
    assert result.step == 2
    assert all(math.isfinite(r["loss"]) for r in result.history if "loss" in r)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["rewards=[{name: math_corect}]"], ConfigError, "unknown reward 'math_corect'"),
        (["sampling.num_generations=1"], ConfigError, "num_generations must be at least 2"),
        (["model.path=runs/no-such-sft/final"], ConfigError, "run that first"),
        (["data.max_prompt_length=5"], DataError, "synthetic row 1: the prompt has"),
        (["sampling.temperature=-1"], ConfigError, "sampling.temperature must be 0"),
        (["sampling.top_p=0"], ConfigError, "sampling.top_p must be in"),
        (["sampling.top_k=-2"], ConfigError, "sampling.top_k must be 0"),
        (["task_metric=math_corect"], ConfigError, "unknown reward 'math_corect'"),
        (["task_metric=model:runs/rm/final"], ConfigError, "names a reward model"),
    ],
)
def test_mistakes_are_reported_before_training(tmp_path, overrides, error, message):
    out = tmp_path / "grpo"
    with pytest.raises(error, match=message):
        run(grpo_config(out, *overrides))
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "reward function 'math_correct' needs an argument the data does not give"),
        (["rewards=[{name: format}]", "task_metric=math_correct"], "'task_metric math_correct' needs an argument"),
    ],
)
def test_a_checker_that_needs_a_column_the_data_lacks_is_refused_before_training(tmp_path, overrides, message):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "topic": "numbers"}) + "\n" for i in range(20)))
    out = tmp_path / "grpo"
    with pytest.raises(RewardFunctionError, match=message):
        run(grpo_config(out, f"data.path={data}", *overrides))
    assert not out.exists()


def test_the_default_lifts_held_out_exact_match_sampled_and_greedy(tmp_path, sft_warm_start):
    # The default run cut to 100 of its 150 steps, evaluated at the start and the end only. Held-out prompts are
    # never training prompts (tunekit.data.synthetic reserves them). Measured with one torch thread, as under
    # pytest-xdist (seed 0): sampled exact match 0.334 -> 0.564, greedy 0.453 -> 0.703; the full default reaches
    # 0.627 / 0.734 (docs/results.md).
    result = run(
        load_config(
            GRPOConfig,
            None,
            [
                f"output_dir={tmp_path / 'grpo'}",
                f"model.path={sft_warm_start}",
                "train.progress=false",
                "max_steps=100",
                "train.eval_every=100",
            ],
        )
    )
    evals = [r for r in result.history if "eval/task/math_correct" in r]
    assert [r["step"] for r in evals] == [0, 100]
    start, end = evals
    assert end["eval/task/math_correct"] > start["eval/task/math_correct"] + 0.1, evals
    assert end["eval/greedy/task/math_correct"] >= start["eval/greedy/task/math_correct"], evals
    # The reward here is the checker itself, so the two must agree: a sign that the metric scores what trains.
    assert end["eval/reward"] == end["eval/task/math_correct"]


def test_a_reward_model_from_the_reward_recipe_is_a_reward_source(tmp_path):
    from tunekit.models.reward import RewardScorer
    from tunekit.recipes.reward import RewardConfig
    from tunekit.recipes.reward import run as run_reward
    from tunekit.rl.rewards import load_reward_function

    rm = tmp_path / "rm"
    run_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"output_dir={rm}",
                "train.progress=false",
                "max_steps=3",
                "data.synthetic_size=48",
                "data.eval_fraction=0",
            ],
        )
    )
    fn = load_reward_function(f"model:{rm / 'final'}")
    prompts, completions = ["Question: What is 1 + 2?\nAnswer:"], [" 1 + 2 = 3. #### 3"]
    assert fn(prompts=prompts, completions=completions, answer=["3"]) == pytest.approx(
        RewardScorer.from_pretrained(rm / "final").score(prompts, completions), abs=1e-6
    )
    result = run(grpo_config(tmp_path / "grpo", "max_steps=1", f"rewards=[{{name: 'model:{rm / 'final'}'}}]"))
    assert f"rewards/model:{rm / 'final'}" in result.history[-1]
    with pytest.raises(ConfigError, match="is not a reward model directory"):
        load_reward_function(f"model:{tmp_path}")


def test_a_resume_between_the_passes_of_a_batch_trains_on_the_same_rollouts(tmp_path):
    """With two passes a batch, the checkpoint at step 3 falls between a batch's passes: the resumed run must train
    step 4 on the rollouts the interrupted run sampled at step 2, not on new ones from a moved policy."""
    common = ["loss.passes=2", "max_steps=4", "train.save_every=1", "train.keep_checkpoints=0", "train.lr=1e-2"]
    # A reward that differs within a group, so that the rollouts trained on move the weights (math_correct scores
    # the untrained model's completions all 0).
    common.append("rewards=[{name: length_penalty, kwargs: {target_chars: 8}}]")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(grpo_config(whole, *common))
    assert (whole / "checkpoints" / "step-3" / "experience.pt").is_file()
    assert not (whole / "checkpoints" / "step-2" / "experience.pt").exists()  # a batch boundary: nothing to keep
    run(grpo_config(resumed, *common, f"resume={whole / 'checkpoints' / 'step-3'}"))
    expected = load_file(str(whole / "final" / "adapter_model.safetensors"))
    got = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)


def test_a_resumed_run_writes_each_steps_samples_once(tmp_path):
    common = ["max_steps=4", "train.save_every=2", "train.keep_checkpoints=0", "train.eval_every=0"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(grpo_config(whole, *common))
    # The same run killed after step 4's samples were written but before its checkpoint was.
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-4")
    shutil.rmtree(cut / "final")
    run(grpo_config(cut, *common, "resume=auto"))
    resumed, expected = ((out / "samples.jsonl").read_text().splitlines() for out in (cut, whole))
    assert sorted({json.loads(line)["step"] for line in expected}) == [0, 1, 2, 3]
    assert resumed == expected
