"""The label recipe (RLAIF) end to end on the tiny model: math_correct pairs that the dpo and reward recipes train
on as they are, an LLM judge with order consistency, resume equivalence, and mistakes refused with exit code 2
before anything is written."""

import json
import re
from pathlib import Path

import pytest

import tunekit.recipes.label as label
from tunekit.config import load_config
from tunekit.errors import USER_ERROR_EXIT_CODE, exit_on_user_error
from tunekit.recipes.label import LabelConfig, main, run

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "label"
FAST = ["model.path=tiny-llama", "progress=false", "sampling.max_new_tokens=8"]

LONGER = """
def longer(prompts, completions, **columns):
    return [float(len(c)) for c in completions]
"""


def label_config(out, *overrides):
    return load_config(LabelConfig, None, [f"output_dir={out}", *FAST, *overrides])


def read_pairs(out):
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def math_run(tmp_path_factory):
    """16 generated arithmetic prompts, 8 samples each from the untrained tiny model, judged by math_correct: the
    random model gets an answer right now and then, which gives a few pairs (4 with seed 0)."""
    out = tmp_path_factory.mktemp("label") / "math"
    overrides = ["data.synthetic_size=16", "sampling.num_generations=8", "sampling.max_new_tokens=12", "chunk_size=8"]
    return run(label_config(out, *overrides))


@pytest.fixture
def longer_judge(tmp_path):
    path = tmp_path / "judges.py"
    path.write_text(LONGER)
    return f"{path}:longer"


def test_math_correct_pairs_put_the_right_answer_first(math_run):
    from tunekit.rl.rewards import load_reward_function

    final_answer = load_reward_function("math_correct").__globals__["final_answer"]
    pairs = read_pairs(math_run.output_dir)
    assert len(pairs) >= 2
    for pair in pairs:
        assert list(pair) == [
            "prompt",
            "chosen",
            "rejected",
            "chosen_score",
            "rejected_score",
            "judge_margin",
            "answer",
        ]
        assert pair["prompt"].startswith("Question: ") and pair["prompt"].endswith("\nAnswer:")
        assert (pair["chosen_score"], pair["rejected_score"], pair["judge_margin"]) == (1.0, 0.0, 1.0)
        assert final_answer(pair["chosen"]) == pair["answer"] != final_answer(pair["rejected"])
    counts = math_run.counts
    assert counts["prompts"] == 16 == counts["pairs"] + counts.get("low_margin", 0) + counts.get("identical", 0)
    assert counts["pairs"] == len(pairs)
    assert math_run.summary.startswith(f"labelled 16 prompts: {len(pairs)} pairs written to ")
    assert f"dropped {int(counts['low_margin'])} with margin <= 0 and " in math_run.summary
    assert "mean margin 1.000" in math_run.summary and "order consistency" not in math_run.summary
    progress = json.loads((math_run.output_dir / "progress.json").read_text())
    assert progress["prompts_done"] == 16 and progress["chunks_done"] == 2
    config = (math_run.output_dir / "config.yaml").read_text()
    assert "name: math_correct" in config and "own_decoder" in config  # resolved fast paths recorded


def test_dpo_and_reward_recipes_train_on_the_pairs_as_they_are(math_run, tmp_path):
    from tunekit.recipes.dpo import DPOConfig
    from tunekit.recipes.dpo import run as run_dpo
    from tunekit.recipes.reward import RewardConfig
    from tunekit.recipes.reward import run as run_reward

    data = [f"data.path={math_run.output_dir / 'pairs.jsonl'}", "data.eval_fraction=0", "max_steps=1"]
    common = [*data, "train.micro_batch_size=2", "train.progress=false"]
    dpo = run_dpo(load_config(DPOConfig, None, [f"output_dir={tmp_path / 'dpo'}", *common]))
    reward = run_reward(load_config(RewardConfig, None, [f"output_dir={tmp_path / 'reward'}", *common]))
    for result in (dpo, reward):
        assert result.step == 1
    assert (tmp_path / "dpo" / "final").is_dir() and (tmp_path / "reward" / "final").is_dir()


def test_llm_judge_compares_round_robin_and_reports_order_consistency(tmp_path):
    out = tmp_path / "llm"
    result = run(
        label_config(
            out, "data.synthetic_size=3", "sampling.num_generations=3", "judge.name=llm:tiny-llama", "chunk_size=2"
        )
    )
    counts = result.counts
    assert counts["comparisons"] == 9  # 3 prompts, 3 distinct samples each: 3 pairs, asked in both orders
    assert 0 <= counts["consistent"] <= 9
    pairs = read_pairs(out)
    assert len(pairs) == counts["pairs"] == 3 - counts.get("low_margin", 0) - counts.get("identical", 0)
    for pair in pairs:
        assert list(pair)[:5] == ["prompt", "chosen", "rejected", "judge_margin", "consistency"]
        assert isinstance(pair["consistency"], bool) and 0 < pair["judge_margin"] < 1
    rate = counts["consistent"] / 9
    assert f"order consistency {rate:.3f} over 9 comparisons" in result.summary


def test_pointwise_llm_judge_scores_each_response(tmp_path):
    overrides = ["data.synthetic_size=2", "sampling.num_generations=3", "judge.name=llm:tiny-llama"]
    result = run(label_config(tmp_path / "scores", *overrides, "judge.rubric=helpfulness-score", "min_margin=-1"))
    pairs = read_pairs(tmp_path / "scores")
    assert len(pairs) == result.counts["pairs"] == 2
    for pair in pairs:
        assert 1 <= pair["rejected_score"] <= pair["chosen_score"] <= 5
        assert pair["judge_margin"] == pytest.approx(pair["chosen_score"] - pair["rejected_score"])
        assert "consistency" not in pair


def test_a_reward_model_judge_that_ties_everything_gives_no_pair(tmp_path, tiny_llama_path):
    """A reward model whose score head is all zeros scores every response 0: every prompt's pair has margin 0,
    which min_margin=0 drops, and counts."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = tmp_path / "rm"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_path, num_labels=1)
    with torch.no_grad():
        model.score.weight.zero_()
    model.save_pretrained(rm)
    AutoTokenizer.from_pretrained(tiny_llama_path).save_pretrained(rm)
    overrides = ["data.synthetic_size=3", "sampling.num_generations=2", f"judge.name=model:{rm}"]
    dropped = run(label_config(tmp_path / "dropped", *overrides))
    assert dropped.counts["low_margin"] == 3 and dropped.counts.get("pairs", 0) == 0
    assert (tmp_path / "dropped" / "pairs.jsonl").read_text() == ""
    assert "0 pairs written" in dropped.summary and "mean margin nan" in dropped.summary


def test_killed_and_resumed_run_writes_the_same_file(tmp_path, monkeypatch, capsys, longer_judge):
    overrides = ["data.synthetic_size=6", "sampling.num_generations=2", "chunk_size=2", f"judge.name={longer_judge}"]
    whole = run(label_config(tmp_path / "whole", *overrides, "min_margin=-1"))
    assert whole.counts["pairs"] == 6  # the longer response is chosen, ties kept: every prompt gives a pair

    real = label.generate_rollout
    sampled = []

    def killed_on_third_chunk(model, tokenizer, prompts, sampling):
        if len(sampled) == 4:
            raise KeyboardInterrupt
        sampled.extend(p.prompt for p in prompts)
        return real(model, tokenizer, prompts, sampling)

    monkeypatch.setattr(label, "generate_rollout", killed_on_third_chunk)
    with pytest.raises(SystemExit, match="130"):
        run(label_config(tmp_path / "killed", *overrides, "min_margin=-1"))
    assert len(read_pairs(tmp_path / "killed")) == 4
    assert (
        f"interrupted: 4 of 6 prompts done (2 chunks); continue with output_dir={tmp_path / 'killed'} resume=auto"
        in (capsys.readouterr().err)
    )
    sampled.clear()
    monkeypatch.setattr(label, "generate_rollout", lambda *a: sampled.extend(p.prompt for p in a[2]) or real(*a))
    resumed = run(label_config(tmp_path / "killed", *overrides, "min_margin=-1", "resume=auto"))
    assert len(sampled) == 2  # the last chunk's prompts only
    assert (tmp_path / "killed" / "pairs.jsonl").read_bytes() == (tmp_path / "whole" / "pairs.jsonl").read_bytes()
    assert resumed.counts == whole.counts and resumed.summary == whole.summary.replace("whole", "killed")


def test_chat_prompts_are_written_back_as_messages_and_read_by_an_llm_judge_as_a_transcript(tmp_path, longer_judge):
    from tunekit.feedback.prompts import FeedbackPrompt

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    data = write_jsonl(tmp_path / "chats.jsonl", [{"prompt": chat, "topic": "sums"}])
    overrides = [f"data.path={data}", "sampling.num_generations=2", f"judge.name={longer_judge}", "min_margin=-1"]
    run(label_config(tmp_path / "run", *overrides))
    (pair,) = read_pairs(tmp_path / "run")
    assert pair["prompt"] == chat and pair["topic"] == "sums"
    assert FeedbackPrompt(None, chat).readable == "System: Be brief.\n\nUser: What is 2 + 2?"


def test_resume_with_other_sampling_is_refused(tmp_path, longer_judge):
    overrides = ["data.synthetic_size=2", "sampling.num_generations=2", f"judge.name={longer_judge}"]
    run(label_config(tmp_path / "run", *overrides))
    with pytest.raises(Exception, match=r"sampling\.temperature: 1\.0 then, 0\.5 now"):
        run(label_config(tmp_path / "run", *overrides, "resume=auto", "sampling.temperature=0.5"))


def refuse(tmp_path, *overrides):
    """Run main with ``overrides``, asserting exit code 2 and that nothing was written."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main([f"output_dir={out}", *FAST, *overrides]))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    assert not out.exists()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_prompt_column", "prompts.jsonl line 2: missing column 'prompt'"),
        ("no_answer_column", "prompts.jsonl line 2 lacks what a reward function needs"),
        ("unknown_judge", "unknown reward 'math_correctly'"),
        ("rubric_lacking_fields", "it lacks {response_b}"),
        ("rubric_column_missing", "rubric .*correctness.yaml reads {reference}"),
        ("one_generation", "sampling.num_generations must be at least 2"),
        ("empty_judge", "judge.name is empty"),
    ],
)
def test_bad_input_is_named_before_anything_is_written(tmp_path, capsys, case, message):
    good = {"prompt": "What is 1 + 1?", "answer": "2"}
    if case == "no_prompt_column":
        data = write_jsonl(tmp_path / "prompts.jsonl", [good, {"question": "What is 2 + 2?", "answer": "4"}])
        overrides = [f"data.path={data}"]
    elif case == "no_answer_column":
        data = write_jsonl(tmp_path / "prompts.jsonl", [good, {"prompt": "What is 2 + 2?"}])
        overrides = [f"data.path={data}"]
    elif case == "unknown_judge":
        overrides = ["judge.name=math_correctly"]
    elif case == "rubric_lacking_fields":
        rubric = tmp_path / "rubric.yaml"
        rubric.write_text("kind: pairwise\ntemplate: '{prompt} {response_a}'\nchoices: [A, B]\n")
        overrides = ["judge.name=llm:tiny-llama", f"judge.rubric={rubric}"]
    elif case == "rubric_column_missing":
        overrides = ["judge.name=llm:tiny-llama", "judge.rubric=correctness"]
    elif case == "one_generation":
        overrides = ["sampling.num_generations=1"]
    else:
        overrides = ["judge.name= "]
    refuse(tmp_path, *overrides)
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_shipped_configs_parse_and_state_their_command():
    paths = sorted(RECIPES.glob("*.yaml"))
    assert paths
    for path in paths:
        load_config(LabelConfig, path)
        assert any("tunekit.recipes.label" in line for line in path.read_text().splitlines()[:4])
