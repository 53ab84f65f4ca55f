"""The eval recipe's judge and agreement tasks: a judge's view of the model's completions, and the judge's own
agreement with human-labelled pairs before it is trusted."""

import pytest

from tunekit.config import load_config
from tunekit.errors import USER_ERROR_EXIT_CODE, exit_on_user_error
from tunekit.recipes.eval import EvalConfig, main, run

FAST = ["data.synthetic_size=6", "generation.max_new_tokens=8", "batch_size=8"]


def evaluate(out, *overrides):
    return run(load_config(EvalConfig, None, [f"output_dir={out}", *FAST, *overrides]))


def test_a_checker_as_judge_scores_what_exact_match_counts(tmp_path):
    result = evaluate(tmp_path / "e", "tasks=[exact_match, judge]", "judge.name=math_correct")
    assert result.metrics["judge"] == result.metrics["exact_match"]
    assert [s["judge_score"] for s in result.samples] == [float(s["correct"]) for s in result.samples]


def test_a_pairwise_llm_judge_against_the_reference(tmp_path):
    result = evaluate(tmp_path / "e", "tasks=[judge]", "judge.name=llm:tiny-llama", "judge.rubric=helpfulness")
    assert 0 <= result.metrics["judge"] <= 1 and 0 <= result.metrics["judge/consistency"] <= 1
    assert all(s["opponent_completion"].startswith(" ") and "####" in s["opponent_completion"] for s in result.samples)
    counts = result.record["counts"]["judge"]
    assert counts["examples"] == 6 and counts["wins"] + counts["losses"] <= 6


def test_a_pointwise_rubric_reports_its_score_distribution(tmp_path):
    result = evaluate(tmp_path / "e", "tasks=[judge]", "judge.name=llm:tiny-llama", "judge.rubric=helpfulness-score")
    shares = [result.metrics[f"judge/p_{k}"] for k in "12345"]
    assert sum(shares) == pytest.approx(1.0) and 1 <= result.metrics["judge"] <= 5


def test_agreement_of_a_perfect_checker_with_the_labels_is_total(tmp_path):
    result = evaluate(tmp_path / "e", "tasks=[agreement]", "judge.name=math_correct", "agreement.max_examples=40")
    assert result.metrics == {"agreement": 1.0, "agreement/consistency": 1.0, "agreement/kappa": 1.0}
    assert result.record["counts"]["agreement"] == {"examples": 40, "agreed": 40}


def test_agreement_of_an_llm_judge_on_hh_rlhf(tmp_path, shared_data):
    result = evaluate(
        tmp_path / "e",
        "tasks=[agreement]",
        "judge.name=llm:tiny-llama",
        "judge.rubric=harmlessness",
        f"agreement.path={shared_data / 'hh-rlhf' / 'harmless-base-test.jsonl'}",
        "agreement.max_examples=6",
    )
    assert 0 <= result.metrics["agreement"] <= 1 and -1 <= result.metrics["agreement/kappa"] <= 1
    assert result.record["counts"]["agreement"]["examples"] == 6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tasks=[agreement]"], "judge.name is empty: the judge and agreement tasks need a judge"),
        (["tasks=[judge]", "judge.name=llm:tiny-llama", "judge.rubric=kind"], "rubric 'kind' is neither a shipped"),
        (["tasks=[agreement]", "judge.name=math_correct", "agreement.path=/nowhere/p.jsonl"], "does not exist"),
    ],
)
def test_judge_mistakes_exit_2_with_nothing_written(tmp_path, capsys, overrides, message):
    out = tmp_path / "e"
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(lambda: main([f"output_dir={out}", *overrides]))
    assert stop.value.code == USER_ERROR_EXIT_CODE
    assert message in capsys.readouterr().err
    assert not out.exists()
