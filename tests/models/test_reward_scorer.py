"""RewardScorer.score_conversations, as docs/reward.md documents it: one score per conversation, read at its last
token, tokenized as reward training tokenizes a chat pair."""

import pytest
import torch

from tunekit.data.pairs import PairDataConfig, tokenize_pairs
from tunekit.data.sources import Rows
from tunekit.models.load import ModelConfig, load_model
from tunekit.models.reward import RewardScorer, last_token_scores

USER = {"role": "user", "content": "What is 2 + 3?"}
CONVERSATIONS = [
    [USER, {"role": "assistant", "content": "2 + 3 = 5. #### 5"}],
    [USER, {"role": "assistant", "content": "It is 6. #### 6"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
]


@pytest.fixture(scope="module")
def scorer(tiny_llama_path, tokenizer):
    torch.manual_seed(0)
    model = load_model(ModelConfig(path=tiny_llama_path), head="score").eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a random head: different texts get different scores
    return RewardScorer(model, tokenizer, batch_size=3)


def trained_ids(tokenizer, chosen, rejected):
    """The token ids reward training gives a chat pair (prompt, then each transcript's own turns)."""
    rows = Rows("pairs", [{"chosen": chosen, "rejected": rejected}])
    [pair], _ = tokenize_pairs(rows, PairDataConfig(max_length=4096), tokenizer)
    return pair.prompt_ids + pair.chosen_ids, pair.prompt_ids + pair.rejected_ids


def test_one_score_per_conversation_in_order(scorer):
    scores = scorer.score_conversations(CONVERSATIONS)
    assert isinstance(scores, list) and len(scores) == len(CONVERSATIONS)
    assert all(isinstance(s, float) for s in scores)
    assert len(set(scores)) == len(scores)  # not one score for all: each conversation is its own
    assert scores[::-1] == pytest.approx(scorer.score_conversations(CONVERSATIONS[::-1]), abs=1e-5)
    assert scorer.score_conversations([]) == []


def test_a_conversation_scores_the_tokens_reward_training_gave_it(scorer, tokenizer):
    chosen_ids, rejected_ids = trained_ids(tokenizer, CONVERSATIONS[0], CONVERSATIONS[1])
    with torch.no_grad():
        for ids, conversation in ((chosen_ids, CONVERSATIONS[0]), (rejected_ids, CONVERSATIONS[1])):
            expected = last_token_scores(scorer.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
            assert scorer.score_conversations([conversation]) == pytest.approx(expected.tolist(), abs=1e-5)


def test_the_score_is_read_at_the_last_token_of_the_chat_template_rendering(scorer, tokenizer):
    """The chat template writes every special token (the tiny template: no BOS); none is added in front."""
    text = tokenizer.apply_chat_template(CONVERSATIONS[2], tokenize=False, add_generation_prompt=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] != tokenizer.bos_token_id
    assert scorer.score_conversations([CONVERSATIONS[2]]) == pytest.approx(scorer.score_ids([ids]), abs=1e-5)
    assert scorer.score_conversations([CONVERSATIONS[2]]) == pytest.approx(
        scorer.score_texts([text], add_bos=False), abs=1e-5
    )


def test_scores_do_not_depend_on_the_batch(scorer, tokenizer):
    together = scorer.score_conversations(CONVERSATIONS)  # batches of 3 and 1, padded to their longest
    alone = [scorer.score_conversations([c])[0] for c in CONVERSATIONS]
    assert together == pytest.approx(alone, abs=1e-5)
