"""The constitution recipe end to end on the tiny model: answer, critique against a drawn principle, revise; SFT rows
and pairs that the sft and dpo recipes train on as they are; resume equivalence; mistakes refused with exit code 2
before anything is written."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

import tunekit.recipes.constitution as constitution
from tunekit.config import load_config
from tunekit.data.prompts import PromptExample
from tunekit.errors import USER_ERROR_EXIT_CODE, exit_on_user_error
from tunekit.feedback.constitution import load_constitution
from tunekit.feedback.prompts import FeedbackPrompt
from tunekit.recipes.constitution import ConstitutionConfig, main, revised_rows, run

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "constitution"
FAST = ["progress=false", "sampling.max_new_tokens=8"]


def config(out, *overrides):
    return load_config(ConstitutionConfig, None, [f"output_dir={out}", *FAST, *overrides])


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def revised(tmp_path_factory):
    """Three generated prompts, answered, critiqued and revised by the tiny model, with every generate call's
    prompts recorded."""
    out = tmp_path_factory.mktemp("constitution") / "run"
    real, asked = constitution.generate_rollout, []

    def recording(model, tokenizer, prompts, sampling):
        asked.append([p.prompt for p in prompts])
        return real(model, tokenizer, prompts, sampling)

    constitution.generate_rollout = recording
    try:
        result = run(config(out, "data.synthetic_size=3", "chunk_size=2"))
    finally:
        constitution.generate_rollout = real
    return result, asked


def test_writes_revisions_as_sft_rows_and_preferred_over_the_originals(revised):
    result, _ = revised
    sft, pairs = lines(result.output_dir / "sft.jsonl"), lines(result.output_dir / "pairs.jsonl")
    names = {p.name for p in load_constitution("recipes/constitution/principles.yaml").principles}
    assert len(sft) == result.counts["sft_rows"] == 3 - result.counts.get("empty_revision", 0)
    for row in sft:
        assert list(row) == ["prompt", "completion", "principle", "critique", "answer"]
        assert row["prompt"].startswith("Question: ") and row["principle"] in names
    assert len(pairs) == result.counts["pairs"]
    by_prompt = {row["prompt"]: row for row in sft}
    for pair in pairs:
        assert list(pair) == ["prompt", "chosen", "rejected", "principle", "answer"]
        assert pair["chosen"] == by_prompt[pair["prompt"]]["completion"] != pair["rejected"]
    drawn = sum(v for k, v in result.counts.items() if k.startswith("principle/"))
    assert drawn == result.counts["prompts"] == 3
    assert result.summary.startswith(f"revised 3 prompts: {len(sft)} SFT rows to ")
    assert f"and {len(pairs)} pairs to " in result.summary and "principles drawn: " in result.summary


def test_critique_and_revision_are_asked_through_the_chat_template(revised):
    result, asked = revised
    # Chunks of 2 and 1 prompts, three generate calls each: answers, critiques, revisions.
    assert [len(a) for a in asked] == [2, 2, 2, 1, 1, 1]
    answers, critiques, revisions = asked[:3]
    assert answers[0].startswith("Question: ") and "<|user|>" not in answers[0]
    shipped = load_constitution("recipes/constitution/principles.yaml")
    sft = lines(result.output_dir / "sft.jsonl")
    principle = next(p for p in shipped.principles if p.name == sft[0]["principle"])
    critique_ask = shipped.critique_request(principle)
    assert critiques[0].startswith("<|user|>\nQuestion: ")
    assert critiques[0].endswith(f"<|user|>\n{critique_ask}</s>\n<|assistant|>\n")
    assert revisions[0].startswith(critiques[0])
    assert revisions[0].endswith(f"<|user|>\n{shipped.revision_request(principle)}</s>\n<|assistant|>\n")
    assert sft[0]["critique"] in revisions[0]


def test_sft_and_dpo_recipes_train_on_the_files_as_they_are(revised, tmp_path):
    from tunekit.recipes.dpo import DPOConfig
    from tunekit.recipes.dpo import run as run_dpo
    from tunekit.recipes.sft import SFTConfig
    from tunekit.recipes.sft import run as run_sft

    result, _ = revised
    common = ["data.eval_fraction=0", "max_steps=1", "train.micro_batch_size=2", "train.progress=false"]
    sft = run_sft(
        load_config(
            SFTConfig, None, [f"output_dir={tmp_path / 'sft'}", f"data.path={result.output_dir / 'sft.jsonl'}", *common]
        )
    )
    dpo = run_dpo(
        load_config(
            DPOConfig,
            None,
            [f"output_dir={tmp_path / 'dpo'}", f"data.path={result.output_dir / 'pairs.jsonl'}", *common],
        )
    )
    assert sft.step == 1 and dpo.step == 1


def test_killed_and_resumed_run_writes_the_same_files(tmp_path, monkeypatch):
    overrides = ["data.synthetic_size=4", "chunk_size=2", "seed=1"]
    run(config(tmp_path / "whole", *overrides))
    real, calls = constitution.generate_rollout, []

    def killed_in_second_chunk(*args):
        calls.append(args[2])
        if len(calls) == 5:  # the second chunk's critiques
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(constitution, "generate_rollout", killed_in_second_chunk)
    with pytest.raises(SystemExit, match="130"):
        run(config(tmp_path / "killed", *overrides))
    calls.clear()
    monkeypatch.setattr(constitution, "generate_rollout", lambda *args: calls.append(args[2]) or real(*args))
    run(config(tmp_path / "killed", *overrides, "resume=auto"))
    assert len(calls) == 3  # the second chunk's answers, critiques and revisions: the first is not done again
    for name in ("sft.jsonl", "pairs.jsonl"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def example(prompt="Question: What is 1 + 1?\nAnswer:"):
    return FeedbackPrompt(PromptExample(prompt, [1], {"answer": "2"}, 1, "row 1"), prompt)


def test_an_unchanged_or_empty_revision_is_left_out_of_the_pairs_and_counted():
    counts = Counter()
    assert len(revised_rows(example(), "direct", " 2", "fine", "2 ", counts)) == 1  # whitespace aside, unchanged
    assert len(revised_rows(example(), "direct", "", "empty", "2", counts)) == 1  # no original to prefer it to
    assert revised_rows(example(), "direct", "2", "hm", "  ", counts) == []  # nothing to train on
    sft, pair = revised_rows(example(), "accurate", "3", "wrong", "2", counts)
    assert sft == {
        "prompt": example().raw,
        "completion": "2",
        "principle": "accurate",
        "critique": "wrong",
        "answer": "2",
    }
    assert pair == {"prompt": example().raw, "chosen": "2", "rejected": "3", "principle": "accurate", "answer": "2"}
    assert counts == Counter(
        {"prompts": 4, "principle/direct": 3, "principle/accurate": 1, "sft_rows": 3, "unchanged": 1}
        | {"empty_original": 1, "empty_revision": 1, "pairs": 1}
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", "principles 'nowhere.yaml' is not a file"),
        (
            "no_field_in_config_template",
            r"config key critique_template: the template must be a string containing \{principle\}",
        ),
        ("entry_without_text", "entry 1 of principles needs a non-empty name and text"),
        ("no_principles", "principles must be a non-empty list"),
        ("two_generations", "sampling.num_generations must be 1"),
        ("no_prompt_column", "prompts.jsonl line 1: missing column 'prompt'"),
    ],
)
def test_bad_input_is_named_before_anything_is_written(tmp_path, capsys, case, message):
    shipped = (RECIPES / "principles.yaml").read_text()
    principles = tmp_path / "principles.yaml"
    overrides = [f"principles={principles}"]
    if case == "missing_file":
        overrides = ["principles=nowhere.yaml"]
    elif case == "no_field_in_config_template":
        principles.write_text(shipped)
        overrides.append("critique_template=Critique your answer.")
    elif case == "entry_without_text":
        principles.write_text(shipped.replace("    text: The answer addresses", "    txt: The answer addresses"))
    elif case == "no_principles":
        principles.write_text(shipped.split("principles:")[0] + "principles: []\n")
    elif case == "two_generations":
        overrides.append("sampling.num_generations=2")
    else:
        principles.write_text(shipped)
        data = tmp_path / "prompts.jsonl"
        data.write_text(json.dumps({"question": "What is 1 + 1?"}) + "\n")
        overrides.append(f"data.path={data}")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: main([f"output_dir={out}", *FAST, *overrides]))
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    assert not out.exists()
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_shipped_principles_and_configs_load():
    shipped = load_constitution(str(RECIPES / "principles.yaml"))
    assert len(shipped.principles) >= 4
    for principle in shipped.principles:
        assert principle.text in shipped.critique_request(principle)
        assert principle.text in shipped.revision_request(principle)
    configs = sorted(RECIPES.glob("*.yaml"))
    for path in (p for p in configs if p.name != "principles.yaml"):
        load_config(ConstitutionConfig, path)
        assert any("tunekit.recipes.constitution" in line for line in path.read_text().splitlines()[:4])
    # The shipped file is found by its repository path from any directory.
    assert load_constitution("recipes/constitution/principles.yaml") == shipped
