"""Rollouts: KV-cached generation, masks and group layout."""

import copy

import torch

from tunekit.data import synthetic
from tunekit.models.load import ModelConfig, load_model
from tunekit.rl.rollout import PromptExample, SamplingConfig, end_token_ids, generate_rollout


def prompts(tokenizer, n=3):
    rows = synthetic.prompts_with_answers(n, seed=1)
    return [
        PromptExample(
            r["prompt"],
            [tokenizer.bos_token_id] + tokenizer(r["prompt"], add_special_tokens=False)["input_ids"],
            {"answer": r["answer"]},
            i,
        )
        for i, r in enumerate(rows)
    ]


def test_kv_cache_gives_the_same_greedy_tokens(tiny_llama_path, tokenizer):
    model = load_model(ModelConfig(path=tiny_llama_path)).eval()
    batch = prompts(tokenizer, 4)
    width = max(len(p.prompt_ids) for p in batch)
    ids = torch.full((4, width), tokenizer.pad_token_id)
    mask = torch.zeros((4, width), dtype=torch.long)
    for b, p in enumerate(batch):
        ids[b, width - len(p.prompt_ids) :] = torch.tensor(p.prompt_ids)
        mask[b, width - len(p.prompt_ids) :] = 1
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_rollout_layout_and_masks(tiny_llama_path, tokenizer):
    torch.manual_seed(0)
    model = load_model(ModelConfig(path=tiny_llama_path)).train()
    batch = prompts(tokenizer, 3)
    rollout = generate_rollout(model, tokenizer, batch, SamplingConfig(num_generations=4, max_new_tokens=6))
    assert rollout.input_ids.shape[0] == 12
    assert rollout.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert rollout.batch()["example_ids"].tolist() == rollout.prompt_index  # what a loss-spike report names
    assert rollout.columns["answer"][4] == batch[1].columns["answer"]
    width = max(len(p.prompt_ids) for p in batch)
    for row in range(12):
        n = rollout.completion_lengths[row].item()
        trained = (rollout.labels[row] != -100).nonzero().flatten().tolist()
        assert trained == list(range(width, width + n))  # exactly the completion, through EOS if it ended
        ended = rollout.input_ids[row, width + n - 1].item() == tokenizer.eos_token_id
        assert ended != rollout.truncated[row].item() or n == 6
        assert rollout.attention_mask[row, width + n :].sum() == 0
    assert model.training  # generation switched to eval mode and back


def test_stop_strings_end_a_completion(tiny_llama_path, tokenizer):
    model = load_model(ModelConfig(path=tiny_llama_path))
    sampling = SamplingConfig(num_generations=2, max_new_tokens=16, temperature=0, stop_strings=[" "])
    rollout = generate_rollout(model, tokenizer, prompts(tokenizer, 1), sampling)
    for text, truncated in zip(rollout.completions, rollout.truncated.tolist(), strict=True):
        assert truncated or text.endswith(" ") or text.count(" ") <= 1


def test_a_row_ended_by_a_stop_string_trains_on_no_padding_when_pad_is_eos(tiny_llama_path, tokenizer):
    """A tokenizer without a pad token pads with EOS; the padding after a stop string is no EOS the policy chose."""
    pad_is_eos = copy.deepcopy(tokenizer)
    pad_is_eos.pad_token = pad_is_eos.eos_token
    model = load_model(ModelConfig(path=tiny_llama_path))
    batch = prompts(pad_is_eos, 3)
    plain = generate_rollout(
        model, pad_is_eos, batch, SamplingConfig(num_generations=1, max_new_tokens=16, temperature=0)
    )
    # A stop string the first completion reaches early, so that its row is padded after it.
    stop = plain.completions[0][:3]
    sampling = SamplingConfig(num_generations=1, max_new_tokens=16, temperature=0, stop_strings=[stop])
    rollout = generate_rollout(model, pad_is_eos, batch, sampling)
    width = max(len(p.prompt_ids) for p in batch)
    assert rollout.completions[0] == stop and not rollout.truncated[0]
    for row, text in enumerate(rollout.completions):
        n = rollout.completion_lengths[row].item()
        trained = rollout.labels[row, width : width + n].tolist()
        assert (rollout.labels[row, width + n :] == -100).all()
        if text.endswith(stop):
            # Trained up to the token that completed the stop string, and no further.
            assert pad_is_eos.eos_token_id not in trained
            assert pad_is_eos.decode(trained).startswith(text) and stop not in pad_is_eos.decode(trained[:-1])


def test_rollouts_stop_at_every_end_token_of_the_generation_config(tiny_llama_path, tokenizer):
    """A chat model's turn ends with a token its generation_config lists beside the tokenizer's EOS (Llama 3's
    <|eot_id|>): a rollout must end there, as generate does, and train on nothing after it."""
    model = load_model(ModelConfig(path=tiny_llama_path))
    batch = prompts(tokenizer, 2)
    greedy = SamplingConfig(num_generations=1, max_new_tokens=8, temperature=0)
    free = generate_rollout(model, tokenizer, batch, greedy)
    width = max(len(p.prompt_ids) for p in batch)
    turn_end = free.input_ids[0, width + 1].item()  # the first completion's second token stands in for <|eot_id|>
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, turn_end]
    assert end_token_ids(model, tokenizer) == [tokenizer.eos_token_id, turn_end]
    ended = generate_rollout(model, tokenizer, batch, greedy)
    assert ended.completion_lengths[0] == 2 and not ended.truncated[0]
    assert ended.labels[0, width : width + 2].tolist() == free.input_ids[0, width : width + 2].tolist()
    assert (ended.labels[0, width + 2 :] == -100).all()
