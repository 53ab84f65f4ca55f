"""Online DPO (dpo recipe, online.enabled=true): one online step is an offline DPO step on the pairs it sampled and
judged; a run with a reward-function judge logs the judge and resumes exactly; an LLM judge runs end to end; mistakes
stop the run by name before anything is written."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tunekit.rl.online_dpo as online_dpo
from tunekit.config import load_config
from tunekit.data import synthetic
from tunekit.data.pairs import PairDataConfig, tokenize_pairs
from tunekit.data.sources import Rows
from tunekit.errors import exit_on_user_error
from tunekit.models.load import load_tokenizer
from tunekit.recipes.dpo import DPOConfig, main, run
from tunekit.recipes.sft import SFTConfig
from tunekit.recipes.sft import run as run_sft

ONLINE = [
    "online.enabled=true",
    "online.judge.name=math_correct",
    "online.sampling.num_generations=4",
    "online.sampling.max_new_tokens=6",
    "train.progress=false",
]


@pytest.fixture(autouse=True)
def no_charts(monkeypatch):
    """These tests read metrics.jsonl and final/; drawing the charts would cost each run seconds."""
    monkeypatch.setattr("tunekit.train.runner.write_run_charts", lambda run_dir: [])


@pytest.fixture(scope="module")
def answer_policy(tmp_path_factory):
    """The tiny model after 30 SFT steps on "Question: ... Answer:" -> " <number>" and EOS: its samples are a number
    and an end, right about one time in ten, so math_correct tells a group's samples apart now and then. (The full
    SFT warm start that recipes/dpo/online-tiny.yaml uses takes ten times as long to train.)"""
    out = tmp_path_factory.mktemp("answer-policy")
    rows = synthetic.prompts_with_answers(480, seed=0)
    data = out / "answers.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": " " + r["answer"]}) + "\n" for r in rows))
    overrides = [f"output_dir={out / 'run'}", "model.path=tiny-llama", "model.adapter.method=full", f"data.path={data}"]
    overrides += ["data.eval_fraction=0", "max_steps=30", "train.micro_batch_size=16", "train.lr=1e-2"]
    overrides += ["train.warmup_ratio=0", "train.progress=false", "train.eval_every=0"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tunekit.train.runner.write_run_charts", lambda run_dir: [])
        run_sft(load_config(SFTConfig, None, overrides))
    return out / "run" / "final"


def dpo_config(out, *overrides):
    return load_config(DPOConfig, None, [f"output_dir={out}", *overrides])


# sigmoid: DPO with its reference (the base under the adapter), computed on the fly; its loss at the first step is
# log 2 whatever the pairs, since policy and reference are still equal. simpo has no reference, and a loss that
# depends on the pairs from the first step on.
@pytest.mark.parametrize("loss_type", ["sigmoid", "simpo"])
def test_one_online_step_is_an_offline_step_on_the_pairs_it_sampled_and_judged(
    tmp_path, answer_policy, monkeypatch, loss_type
):
    judged = []

    def capture(rollout, choice, keep, group):
        judged.append((rollout, choice, keep))
        return pair_batch(rollout, choice, keep, group)

    pair_batch = online_dpo.pair_batch
    monkeypatch.setattr(online_dpo, "pair_batch", capture)
    # sgd: an update linear in the gradient (AdamW's first step divides by |g| and magnifies rounding); both runs
    # start from the same weights, the same adapter initialisation (seed 0) and the same one-step schedule.
    common = [f"model.path={answer_policy}", "max_steps=1", "train.optimizer=sgd", "train.lr=0.5"]
    common += ["data.eval_fraction=0", "train.progress=false", f"loss.loss_type={loss_type}"]
    sizes = ["data.synthetic_size=16", "train.micro_batch_size=16"]
    online = run(dpo_config(tmp_path / "online", *common, *ONLINE, *sizes))

    (rollout, choice, keep), group = judged[0], 4
    kept = keep.nonzero().flatten().tolist()
    assert 0 < len(kept) < len(keep), "this seed should give both pairs to train on and tied groups to drop"
    rows = [
        {
            "prompt": rollout.prompts[p * group],
            "chosen": rollout.completions[p * group + int(choice.chosen[p])],
            "rejected": rollout.completions[p * group + int(choice.rejected[p])],
        }
        for p in kept
    ]
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # The file's text tokenizes back into exactly the tokens that were sampled (EOS included).
    tokenizer = load_tokenizer(str(answer_policy))
    offline_pairs, _ = tokenize_pairs(Rows("pairs", rows), PairDataConfig(), tokenizer)
    for pair, p in zip(offline_pairs, kept, strict=True):
        for side, ids in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
            row = p * group + int(getattr(choice, side)[p])
            sampled = rollout.input_ids[row][rollout.attention_mask[row].bool()].tolist()
            assert pair.prompt_ids + ids == sampled

    offline = run(
        dpo_config(tmp_path / "offline", *common, f"data.path={pairs_file}", f"train.micro_batch_size={len(rows)}")
    )
    assert online.history[-1]["loss"] == pytest.approx(offline.history[-1]["loss"], abs=1e-6)
    for key in ("rewards/margin", "logps/chosen", "logps/rejected"):
        assert online.history[-1][key] == pytest.approx(offline.history[-1][key], abs=1e-5)
    got = load_file(str(tmp_path / "online" / "final" / "adapter_model.safetensors"))
    expected = load_file(str(tmp_path / "offline" / "final" / "adapter_model.safetensors"))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)
    # LoRA's B starts at 0: the step moved it well past the tolerance, so the comparison means something.
    assert max(float(t.abs().max()) for name, t in expected.items() if "lora_B" in name) > 1e-4


def test_a_run_judged_by_math_correct_logs_the_judge_and_resumes_exactly(tmp_path, answer_policy):
    common = [f"model.path={answer_policy}", *ONLINE, "data.synthetic_size=32", "data.eval_fraction=0.125"]
    common += ["online.max_eval_examples=4", "train.micro_batch_size=8", "max_steps=4", "train.save_every=2"]
    common += ["train.keep_checkpoints=0", "train.eval_every=0", "online.sample_every=1"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    result = run(dpo_config(whole, *common))

    trained = [r for r in result.history if "loss" in r]
    # A step on which every prompt's samples tied has no pair: it is skipped (no update, no line) and counted.
    skipped = [step for step in (1, 2, 3, 4) if step not in {r["step"] for r in trained}]
    assert len(trained) >= 2 and trained[-1]["step"] == 4
    assert trained[-1]["judge/all_tied_steps"] == len(skipped)
    for record in trained:
        for key in ("judge/margin", "judge/chosen", "judge/rejected", "judge/score", "judge/ties", "rewards/margin"):
            assert key in record, key
        assert "judge/consistency" not in record  # a reward function has no order to swap
        # math_correct gives 0 or 1: a kept pair is a right answer over a wrong one.
        assert record["judge/chosen"] == 1.0 and record["judge/rejected"] == 0.0 and record["judge/margin"] == 1.0
    assert any(0 < r["judge/ties"] < 1 for r in trained)
    assert "eval/task/math_correct" in result.history[-1] and "eval/greedy/judge/score" in result.history[-1]
    samples = [json.loads(line) for line in (whole / "samples.jsonl").read_text().splitlines()]
    assert {"step", "prompt", "completion", "judge_score"} <= set(samples[0])

    run(dpo_config(resumed, *common, f"resume={whole / 'checkpoints' / 'step-2'}"))
    expected = load_file(str(whole / "final" / "adapter_model.safetensors"))
    got = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    later = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip([r for r in later if "loss" in r], [r for r in trained if r["step"] > 2], strict=True):
        for key in ("step", "loss", "judge/margin", "judge/ties", "judge/all_tied_steps"):
            assert a[key] == b[key], key


def test_an_llm_judge_compares_the_samples_in_both_orders(tmp_path):
    overrides = ["online.enabled=true", "online.judge.name=llm:tiny-llama", "online.judge.rubric=helpfulness"]
    overrides += ["online.sampling.num_generations=3", "online.sampling.max_new_tokens=4", "data.synthetic_size=2"]
    overrides += ["data.eval_fraction=0", "train.micro_batch_size=2", "max_steps=1", "train.progress=false"]
    result = run(dpo_config(tmp_path / "llm", "model.path=tiny-llama", *overrides))
    record = result.history[-1]
    assert result.step == 1
    # Three samples: three pairs a prompt, each asked in both orders; the margin is a difference of win rates.
    assert 0 <= record["judge/consistency"] <= 1
    assert -1 <= record["judge/margin"] <= 1
    assert "judge/chosen" not in record  # a pairwise judge gives no score to one response
    assert (tmp_path / "llm" / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["online.enabled=true"], "online.judge.name is empty: online DPO needs a judge"),
        (["online.enabled=true", "online.judge.name=math_corect"], "online.judge.name: unknown reward 'math_corect'"),
        (
            ["online.enabled=true", "online.judge.name=llm:tiny-llama", "online.judge.rubric=no-such-rubric"],
            "online.judge.rubric: rubric 'no-such-rubric' is neither a shipped rubric",
        ),
        (
            ["online.enabled=true", "online.judge.name=math_correct", "data.chosen_column=good"],
            "data.chosen_column belongs to preference pairs",
        ),
        (
            ["online.enabled=true", "online.judge.name=math_correct", "reference=precompute"],
            "reference is precompute, but online DPO samples new completions every step",
        ),
        (
            ["online.enabled=true", "online.judge.name=math_correct", "online.sampling.num_generations=1"],
            "online.sampling.num_generations must be at least 2",
        ),
        (["online.judge.name=math_correct"], "online.judge.name is set but online.enabled is false"),
        (
            ["online.enabled=true", "online.judge.name=llm:tiny-llama", "online.judge.rubric=correctness"],
            "synthetic row 1: the judge's rubric (",
        ),
    ],
)
def test_mistakes_exit_2_naming_the_key_before_anything_is_written(tmp_path, capsys, overrides, message):
    out = tmp_path / "dpo"
    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(lambda: main([f"output_dir={out}", "data.synthetic_size=8", *overrides]))
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
