"""The LLM judge on the embedded tiny model: its verdict is the renormalised next-token distribution over the
rubric's answers after the verdict prefix, both orders are asked, reasoning runs first when asked, and rubrics that
cannot work are refused by name."""

import pytest
import torch

from tunekit.data.formats import render_chat
from tunekit.errors import ConfigError, DataError
from tunekit.judges.llm import LLMJudge, verdict_tokens
from tunekit.judges.load import JudgeConfig, check_judge, load_judge
from tunekit.judges.rubric import load_rubric, parse_rubric

PROMPTS = ["Question: What is 2 + 3?\nAnswer:", "Question: What is 4 - 1?\nAnswer:"]
GOOD = [" 2 + 3 = 5. #### 5", " 4 - 1 = 3. #### 3"]
BAD = [" 2 + 3 = 5. #### 7", " 4 - 1 = 3. #### 1"]


@pytest.fixture(scope="module")
def pairwise():
    return load_judge(JudgeConfig(name="llm:tiny-llama", rubric="helpfulness"), device="cpu")


def test_the_verdict_is_the_models_next_token_distribution_over_the_answers(pairwise):
    """Computed by hand: render, append the prefix, one forward, softmax over the answers' tokens."""
    tok, rubric = pairwise.tokenizer, pairwise.rubric
    prefix, answers = verdict_tokens(tok, rubric)
    user = rubric.fill({"prompt": PROMPTS[0], "response_a": GOOD[0], "response_b": BAD[0]})
    conversation = [{"role": "system", "content": rubric.system}, {"role": "user", "content": user}]
    ids = tok(render_chat(conversation, tok, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = pairwise.model(input_ids=torch.tensor([ids + prefix])).logits[0, -1]
    expected = torch.softmax(logits[answers], -1)[0]
    got = pairwise._pairwise(PROMPTS[:1], GOOD[:1], BAD[:1], {})
    torch.testing.assert_close(got, expected[None], atol=1e-5, rtol=0)


def test_both_orders_are_asked_and_averaged(pairwise):
    verdict = pairwise.compare(PROMPTS, GOOD, BAD, {})
    in_order = pairwise._pairwise(PROMPTS, GOOD, BAD, {})
    swapped = pairwise._pairwise(PROMPTS, BAD, GOOD, {})
    torch.testing.assert_close(verdict.prob_first, (in_order + 1 - swapped) / 2)
    assert verdict.consistent.tolist() == ((in_order > 0.5) == (swapped < 0.5)).tolist()
    torch.testing.assert_close(verdict.margin, 2 * verdict.prob_first - 1)


def test_batching_does_not_change_a_verdict(pairwise):
    """Left-padded batches: a judgement does not depend on its batch mates."""
    together = pairwise._pairwise(PROMPTS, GOOD, BAD, {})
    alone = torch.cat([pairwise._pairwise([p], [g], [b], {}) for p, g, b in zip(PROMPTS, GOOD, BAD, strict=True)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_a_pointwise_rubric_gives_expected_scores_and_compares_by_distribution():
    judge = load_judge(JudgeConfig(name="llm:tiny-llama", rubric="helpfulness-score"), device="cpu")
    probs = judge.score_probs(PROMPTS, GOOD, {})
    assert probs.shape == (2, 5) and torch.allclose(probs.sum(-1), torch.ones(2))
    torch.testing.assert_close(judge.score(PROMPTS, GOOD, {}), probs @ torch.arange(1.0, 6.0))
    verdict = judge.compare(PROMPTS, GOOD, GOOD, {})
    torch.testing.assert_close(verdict.prob_first, torch.full((2,), 0.5), atol=1e-5, rtol=0)  # a pair of equals


def test_reasoning_is_written_before_the_verdict():
    judge = load_judge(
        JudgeConfig(name="llm:tiny-llama", rubric="helpfulness", reasoning=True, max_reasoning_tokens=6), device="cpu"
    )
    verdict = judge.compare(PROMPTS, GOOD, BAD, {})
    assert ((verdict.prob_first >= 0) & (verdict.prob_first <= 1)).all()
    plain = load_judge(JudgeConfig(name="llm:tiny-llama", rubric="helpfulness"), device="cpu")
    assert not torch.allclose(verdict.prob_first, plain.compare(PROMPTS, GOOD, BAD, {}).prob_first)


def test_a_rubric_field_the_data_lacks_is_named(tmp_path):
    judge = load_judge(JudgeConfig(name="llm:tiny-llama", rubric="correctness"), device="cpu")
    with pytest.raises(DataError, match=r"reads \{reference\}, which this data has no column 'reference' for"):
        judge.score(PROMPTS, GOOD, {})
    assert judge.score(PROMPTS, GOOD, {"reference": ["5", "3"]}).shape == (2,)


@pytest.mark.parametrize(
    ("rubric", "message"),
    [
        ({"kind": "pairwise", "template": "{prompt} {response_a}"}, r"must contain .*; it lacks \{response_b\}"),
        ({"kind": "pointwise", "template": "{prompt}"}, r"it lacks \{response\}"),
        ({"kind": "ranked", "template": "{prompt}"}, "kind must be pairwise or pointwise"),
        ({"kind": "pairwise", "template": "{prompt} {response_a} {response_b}", "choices": ["A"]}, "at least two"),
        ({"kind": "pointwise", "template": "{prompt} {response}", "choices": ["1", "2"], "values": [1]}, "one number"),
    ],
)
def test_a_rubric_without_what_it_needs_is_refused_by_name(rubric, message):
    with pytest.raises(ConfigError, match=message):
        parse_rubric(rubric, "r.yaml")


def test_answers_that_start_alike_cannot_be_read_apart(pairwise):
    rubric = parse_rubric(
        {"kind": "pairwise", "template": "{prompt} {response_a} {response_b}", "choices": ["first", "firstly"]}, "r"
    )
    with pytest.raises(ConfigError, match="do not start with distinct tokens"):
        LLMJudge(pairwise.model, pairwise.tokenizer, rubric)


def test_judge_names_are_checked_before_anything_loads():
    with pytest.raises(ConfigError, match="judge.name is empty"):
        check_judge(JudgeConfig())
    with pytest.raises(ConfigError, match="rubric 'kindness' is neither a shipped rubric"):
        check_judge(JudgeConfig(name="llm:tiny-llama", rubric="kindness"))
    with pytest.raises(ConfigError, match="unknown reward 'no_such_fn'"):
        check_judge(JudgeConfig(name="no_such_fn"))


def test_every_shipped_rubric_loads_and_reads_on_the_tiny_tokenizer(pairwise):
    for name in ("helpfulness", "harmlessness", "correctness", "helpfulness-score"):
        verdict_tokens(pairwise.tokenizer, load_rubric(name))


def test_a_judge_that_returns_nothing_is_named(tmp_path):
    """A scoring judge whose function gives no verdicts fails by name, not with a shape error somewhere later."""
    from tunekit.rl.rewards import RewardFunctionError

    (tmp_path / "silent.py").write_text("def judge(prompts, completions, **columns):\n    return []\n")
    judge = load_judge(JudgeConfig(name=f"{tmp_path / 'silent.py'}:judge"))
    with pytest.raises(RewardFunctionError, match=r"silent.py:judge"):
        judge.compare(PROMPTS, GOOD, BAD, {})
