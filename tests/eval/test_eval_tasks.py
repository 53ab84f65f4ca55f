"""Eval tasks on known inputs: GSM8K exact match, token-weighted perplexity, win rate with controlled preferences."""

import math
import re

import pytest
import torch

from tunekit.data.sft import tokenize_rows
from tunekit.data.sources import Rows
from tunekit.eval.data import EvalDataConfig, build_prompts, load_eval_rows, require_column, sft_data_config
from tunekit.eval.perplexity import perplexity
from tunekit.eval.sampling import Generations
from tunekit.eval.tasks import exact_match, outcomes, win_rate
from tunekit.models.load import ModelConfig, load_model
from tunekit.rl.rewards import RewardSource, load_reward_function

GSM8K = EvalDataConfig(
    prompt_column="question",
    completion_column="answer",
    prompt_template="Question: {prompt}\nAnswer: ",
    max_examples=25,
)


@pytest.fixture(scope="module")
def gsm8k(shared_data, tokenizer):
    """The first 25 GSM8K test rows, their prompts and reference solutions, read as the recipe reads them."""
    config = EvalDataConfig(**{**GSM8K.__dict__, "path": str(shared_data / "gsm8k" / "test.jsonl")})
    rows = load_eval_rows(config, seed=0)
    prompts = build_prompts(rows, config, tokenizer)
    references = require_column(rows, config.reference_answer_column, "data.answer_column")
    return prompts, references


def checker():
    return RewardSource("math_correct"), load_reward_function("math_correct")


def plus_one(match):
    return f"#### {int(match[1].replace(',', '')) + 1}"


def test_gsm8k_exact_match_on_known_right_and_wrong_answers(gsm8k):
    prompts, references = gsm8k
    assert len(prompts) == 25 and all("####" in r for r in references)
    right = exact_match(prompts, Generations.given(references), references, checker())
    assert right.metrics["exact_match"] == 1.0 and right.counts == {"examples": 25, "correct": 25}
    # The same solutions with the final number changed: every one is wrong.
    wrong_texts = [re.sub(r"#### (-?[\d,]+)", plus_one, r) for r in references]
    assert all(w != r for w, r in zip(wrong_texts, references, strict=True))
    wrong = exact_match(prompts, Generations.given(wrong_texts), references, checker())
    assert wrong.metrics["exact_match"] == 0.0 and not any(s["correct"] for s in wrong.samples)
    # Free-form answers count by their last number; half right, half wrong.
    finals = [r.rsplit("####", 1)[1].strip() for r in references]
    free = [f"So the answer is {f if i % 2 else int(f.replace(',', '')) + 7}." for i, f in enumerate(finals)]
    mixed = exact_match(prompts, Generations.given(free), references, checker())
    assert mixed.counts["correct"] == 12
    assert [s["correct"] for s in mixed.samples] == [bool(i % 2) for i in range(25)]


def test_exact_match_of_n_candidates_reports_any_of_n(gsm8k):
    prompts, references = gsm8k
    prompts, references = prompts[:2], references[:2]
    generations = Generations(
        candidates=[["#### 0", references[0]], ["#### 0", "#### 1"]], truncated=[[False] * 2] * 2, chosen=[0, 0]
    )
    result = exact_match(prompts, generations, references, checker())
    assert result.metrics == {"exact_match": 0.0, "exact_match/any_of_n": 0.5}


def test_perplexity_is_exp_of_the_hand_computed_token_mean(tiny_llama_path, tokenizer):
    rows = Rows(
        "hand",
        [
            {"prompt": "Question: What is 2 + 3?\nAnswer:", "completion": " 2 + 3 = 5. #### 5"},
            {"prompt": "Q: 7?", "completion": " 7"},
            {"prompt": "Question: Ada has 9 apples and gets 4. How many now?\nAnswer:", "completion": " 13"},
        ],
    )
    config = EvalDataConfig(path="hand.jsonl")
    examples, stats = tokenize_rows(rows, sft_data_config(config), tokenizer)
    model = load_model(ModelConfig(path=tiny_llama_path)).eval()
    result = perplexity(model, examples, stats, tokenizer.pad_token_id, batch_size=2)  # padded batches

    total, count, per_example = 0.0, 0, []
    with torch.no_grad():
        for row in rows.rows:
            prompt_ids = [tokenizer.bos_token_id] + tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            target = tokenizer(row["completion"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + target])
            logp = model(ids).logits[0].log_softmax(-1)
            # Completion token j sits at position len(prompt) + j and is predicted from the position before.
            nll = [-logp[len(prompt_ids) + j - 1, t].item() for j, t in enumerate(target)]
            total, count = total + sum(nll), count + len(nll)
            per_example.append(sum(nll) / len(nll))
    assert result.counts["tokens"] == count  # completion tokens and EOS only, as SFT trains
    assert result.metrics["perplexity/nll"] == pytest.approx(total / count, rel=1e-5)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    # Token-weighted, not a mean of per-example means (which would differ on these unequal lengths).
    assert abs(sum(per_example) / 3 - total / count) > 1e-3


def prefers_sevens(prompts, completions, **columns):
    """A judge with known preferences: one point per "7" in the completion."""
    return [float(c.count("7")) for c in completions]


def test_win_rate_counts_wins_losses_and_ties_as_half(tokenizer):
    config = EvalDataConfig(synthetic_size=5)
    prompts = build_prompts(load_eval_rows(config, seed=0), config, tokenizer)
    ours = ["77", "1", "7", "same 7", "77"]
    theirs = ["7", "7", "17", "same 7", "7"]
    # win, loss, tie (equal scores), tie (identical text), win
    result = win_rate(prompts, ours, theirs, (RewardSource("sevens"), prefers_sevens))
    assert [s["win"] for s in result.samples] == [1.0, 0.0, 0.5, 0.5, 1.0]
    assert result.metrics["win_rate"] == pytest.approx(3 / 5)
    assert result.counts == {"examples": 5, "wins": 2, "ties": 2, "losses": 1}
    assert result.metrics["win_rate/score"] == pytest.approx(6 / 5)
    assert [s["opponent_score"] for s in result.samples] == [1.0, 1.0, 1.0, 1.0, 1.0]
    # A margin turns the one-point differences into ties.
    assert win_rate(prompts, ours, theirs, (RewardSource("sevens"), prefers_sevens), 1.0).metrics["win_rate"] == 0.5


def test_outcomes():
    scores = torch.tensor([1.0, 0.0, 0.5, 0.2])
    opponent = torch.tensor([0.0, 1.0, 0.5, 0.25])
    assert outcomes(scores, opponent).tolist() == [1.0, 0.0, 0.5, 0.0]
    assert outcomes(scores, opponent, tie_margin=0.1).tolist() == [1.0, 0.0, 0.5, 0.5]
