"""Generation modes of the eval recipe: greedy, temperature, top-k, top-p and best-of-n, checked step by step."""

import pytest
import torch

from tunekit.eval.data import EvalDataConfig, build_prompts, load_eval_rows
from tunekit.eval.sampling import GenerationConfig, Generations, best_of, generate, sampling_config
from tunekit.models.load import ModelConfig, load_model
from tunekit.rl.rewards import RewardSource
from tunekit.rl.rollout import generate_rollout


@pytest.fixture(scope="module")
def model(tiny_llama_path):
    return load_model(ModelConfig(path=tiny_llama_path)).eval()


@pytest.fixture(scope="module")
def peaked(tiny_llama_path):
    """The tiny model with its output head scaled up: a random model's next-token distribution is nearly flat
    (the best token has about 0.4%), so a nucleus would hold most of the vocabulary; scaled, it holds a few."""
    model = load_model(ModelConfig(path=tiny_llama_path)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(15.0)
    return model


@pytest.fixture(scope="module")
def prompts(tokenizer):
    config = EvalDataConfig(synthetic_size=4)
    return build_prompts(load_eval_rows(config, seed=0), config, tokenizer)


def argmax_decode(model, prompt_ids, eos, steps):
    """Plain greedy decoding without a cache or padding: the argmax of a full forward pass, one token at a time."""
    ids = list(prompt_ids)
    new = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            new.append(token)
            ids.append(token)
            if token == eos:
                break
    return new


def step_logits(model, rollout):
    """[N, L, V] logits of a full forward pass over each rollout row, and the [N, L] mask of sampled tokens
    (position t holds the distribution the token at t + 1 was drawn from)."""
    with torch.no_grad():
        logits = model(
            input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=rollout.position_ids
        ).logits.float()
    sampled = rollout.labels[:, 1:] != -100
    return logits[:, :-1], rollout.labels[:, 1:], sampled


def test_greedy_is_deterministic_and_equals_stepwise_argmax(model, tokenizer, prompts):
    config = GenerationConfig(mode="greedy", max_new_tokens=8, temperature=5.0)  # greedy ignores temperature
    first = generate(model, tokenizer, prompts, config, batch_size=4)
    torch.manual_seed(123)  # a different RNG state must not matter
    second = generate(model, tokenizer, prompts, config, batch_size=3)  # nor the batching (left padding differs)
    assert first.completions == second.completions
    for prompt, completion in zip(prompts, first.completions, strict=True):
        tokens = argmax_decode(model, prompt.prompt_ids, tokenizer.eos_token_id, 8)
        assert completion == tokenizer.decode(tokens, skip_special_tokens=True)


def test_temperature_towards_zero_is_greedy(model, tokenizer, prompts):
    greedy = generate(model, tokenizer, prompts, GenerationConfig(mode="greedy", max_new_tokens=10))
    torch.manual_seed(0)
    cold = generate(model, tokenizer, prompts, GenerationConfig(mode="sample", temperature=1e-5, max_new_tokens=10))
    assert cold.completions == greedy.completions
    torch.manual_seed(0)
    warm = generate(model, tokenizer, prompts, GenerationConfig(mode="sample", temperature=1.0, max_new_tokens=10))
    assert warm.completions != greedy.completions  # the comparison can tell sampling from greedy decoding


def outside_top_k(model, tokenizer, prompts, top_k, k_checked):
    torch.manual_seed(0)
    config = GenerationConfig(mode="best_of_n", n=4, temperature=3.0, top_k=top_k, max_new_tokens=10)
    rollout = generate_rollout(model, tokenizer, prompts, sampling_config(config))
    logits, labels, sampled = step_logits(model, rollout)
    kth = logits.topk(k_checked, dim=-1).values[..., -1]  # [N, L] the k-th largest logit at each step
    chosen = logits.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    # A sampled token is outside the k best when its logit is below the k-th largest (1e-4: cached vs full pass).
    return int(((chosen < kth - 1e-4) & sampled).sum()), int(sampled.sum())


def test_top_k_never_samples_outside_the_k_most_likely(model, tokenizer, prompts):
    outside, total = outside_top_k(model, tokenizer, prompts, top_k=3, k_checked=3)
    assert total > 100 and outside == 0
    # At temperature 3 without top-k, most draws fall outside the 3 best: the check above can fail.
    outside, total = outside_top_k(model, tokenizer, prompts, top_k=0, k_checked=3)
    assert outside > total // 2


def outside_nucleus(model, tokenizer, prompts, top_p, p_checked):
    torch.manual_seed(0)
    config = GenerationConfig(mode="best_of_n", n=4, temperature=1.0, top_p=top_p, max_new_tokens=10)
    rollout = generate_rollout(model, tokenizer, prompts, sampling_config(config))
    logits, labels, sampled = step_logits(model, rollout)
    probs = logits.softmax(-1)
    chosen = probs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # [N, L]
    # The mass of the tokens more likely than the chosen one; it is in the smallest nucleus reaching p exactly
    # when that mass is still below p (1e-4: cached vs full pass).
    before = (probs * (probs > chosen[..., None])).sum(-1)
    return int(((before >= p_checked + 1e-4) & sampled).sum()), int(sampled.sum())


def test_top_p_samples_only_from_the_smallest_nucleus(peaked, tokenizer, prompts):
    outside, total = outside_nucleus(peaked, tokenizer, prompts, top_p=0.7, p_checked=0.7)
    assert total > 100 and outside == 0
    outside, total = outside_nucleus(peaked, tokenizer, prompts, top_p=1.0, p_checked=0.7)
    assert outside > 0  # without top-p some draws leave the nucleus: the check above can fail


def char_score(prompts, completions, **columns):
    """A reward with known scores: the sum of the completion's character codes modulo 101."""
    return [float(sum(map(ord, c)) % 101) for c in completions]


def test_best_of_n_keeps_the_highest_scoring_of_its_samples(model, tokenizer, prompts):
    torch.manual_seed(0)
    config = GenerationConfig(mode="best_of_n", n=5, temperature=1.0, max_new_tokens=8)
    out = generate(model, tokenizer, prompts, config, batch_size=3, select_by=[(RewardSource("chars"), char_score)])
    assert [len(c) for c in out.candidates] == [5] * len(prompts)
    assert all(len(set(c)) > 1 for c in out.candidates)  # n real samples, not one repeated
    for candidates, scores, kept in zip(out.candidates, out.scores, out.completions, strict=True):
        assert scores == char_score([], candidates)
        assert char_score([], [kept])[0] == max(scores)
        assert kept == candidates[scores.index(max(scores))]


def test_best_of_breaks_ties_towards_the_first_and_given_completions_are_kept():
    assert best_of(torch.tensor([[1.0, 3.0, 3.0], [0.0, 0.0, -1.0]])).tolist() == [1, 0]
    given = Generations.given(["a", "b"])
    assert given.completions == ["a", "b"] and given.scores is None
