"""The reward is read at the last real token, whatever the padding side, batch size or pad id."""

import random

import pytest
import torch

from tunekit.data.collate import collate_pairs
from tunekit.data.pairs import PairExample
from tunekit.models.load import ModelConfig, load_model
from tunekit.models.reward import last_token_scores


@pytest.fixture(scope="module")
def score_model(tiny_llama_path):
    torch.manual_seed(0)
    model = load_model(ModelConfig(path=tiny_llama_path), head="score").eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a random head gives scores that differ by position
    return model


def random_pairs(tokenizer, n, seed=0):
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    return [
        PairExample(
            prompt_ids=[tokenizer.bos_token_id] + [rng.randint(10, 300) for _ in range(rng.randint(1, 9))],
            chosen_ids=[rng.randint(10, 300) for _ in range(rng.randint(1, 12))] + [eos],
            rejected_ids=[rng.randint(10, 300) for _ in range(rng.randint(1, 12))] + [eos],
            margin=0.0,
            index=i,
        )
        for i in range(n)
    ]


def scores(model, pairs, pad_id, side):
    batch = collate_pairs(pairs, pad_id=pad_id, padding_side=side)
    with torch.no_grad():
        return last_token_scores(model, batch["input_ids"], batch["attention_mask"])


def test_scores_do_not_depend_on_padding_side_batch_size_or_company(score_model, tokenizer):
    pairs = random_pairs(tokenizer, 8)
    # The pad id equals EOS, and every sequence ends with EOS: the read position must still be that EOS.
    pad = tokenizer.eos_token_id
    right = scores(score_model, pairs, pad, "right")
    left = scores(score_model, pairs, pad, "left")
    alone = torch.cat([scores(score_model, [p], pad, "right") for p in pairs])
    chosen_alone, rejected_alone = alone.view(8, 2).unbind(1)
    torch.testing.assert_close(right, left, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, torch.cat([chosen_alone, rejected_alone]), atol=1e-5, rtol=0)
    # One pair inside a batch of other, longer pairs.
    mixed = scores(score_model, random_pairs(tokenizer, 5, seed=7) + [pairs[3]], pad, "left")
    torch.testing.assert_close(mixed[[5, 11]], torch.stack([right[3], right[11]]), atol=1e-5, rtol=0)


def test_score_is_the_head_output_at_the_final_eos(score_model, tokenizer):
    [pair] = random_pairs(tokenizer, 1, seed=3)
    ids = torch.tensor([pair.prompt_ids + pair.chosen_ids])
    with torch.no_grad():
        hidden = score_model.model(input_ids=ids).last_hidden_state
        expected = score_model.score(hidden)[0, -1, 0]
        got = last_token_scores(score_model, ids, torch.ones_like(ids))[0]
    assert ids[0, -1].item() == tokenizer.eos_token_id
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
