"""token_logps run padding-free (shared prompts computed once, the head only at labels) equals the padded run:
values, masks, entropies and gradients, whatever the padding side."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunekit.data.collate import collate_pairs
from tunekit.data.pairs import PairExample
from tunekit.fast import FastPathConfig, enable_fast_paths
from tunekit.models import logprobs
from tunekit.models.tiny import tiny_model_path


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path("tiny-llama"))
    # Non-zero adapter weights, so that gradients reach both LoRA matrices.
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def pairs():
    torch.manual_seed(1)

    def ids(n):
        return torch.randint(3, 400, (n,)).tolist()

    shared = ids(30)
    return [
        PairExample(shared, ids(5), ids(9), 0.0, 0),
        PairExample(ids(12), ids(40), ids(3), 0.0, 1),
        PairExample(shared, ids(2), ids(2), 0.0, 2),  # the same prompt as pair 0: one prompt, four continuations
    ]


def grads(model):
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_free_equals_padded(policy, side):
    batch = collate_pairs(pairs(), pad_id=0, padding_side=side)
    batch["labels"][4] = -100  # a row with no label at all is left out
    view = logprobs.padding_free_view(batch)
    # Rows: chosen 0, 1, 2, then rejected 0, 1 (no label: left out), 2.
    assert sorted(view.segments) == [(30, 5, 2, 9, 2), (52,)]
    assert view.input_ids.shape[1] == 30 + 5 + 2 + 9 + 2 + 12 + 40
    assert enable_fast_paths(policy, FastPathConfig()).uses("padding-free")

    policy.zero_grad()
    expected = logprobs._padded_token_logps(policy, batch, entropy=True)
    expected[0].sum().backward()
    expected_grads = grads(policy)
    policy.zero_grad()
    got = logprobs.token_logps(policy, batch, entropy=True)
    got[0].sum().backward()
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert torch.allclose(e.float(), g.float(), atol=1e-5)
    for e, g in zip(expected_grads, grads(policy), strict=True):
        assert torch.allclose(e, g, atol=1e-4)


def test_a_batch_without_labels_still_backpropagates(policy):
    batch = collate_pairs(pairs(), pad_id=0)
    batch["labels"][:] = -100
    assert logprobs.padding_free_view(batch) is None
    logps, mask = logprobs.token_logps(policy, batch)
    assert not mask.any()
    logps.sum().backward()  # a zero loss, but a graph to run backward through


def test_rows_with_a_gap_keep_the_padded_computation(policy):
    batch = collate_pairs(pairs(), pad_id=0)
    batch["attention_mask"][0, 3] = 0
    assert logprobs.padding_free_view(batch) is None
