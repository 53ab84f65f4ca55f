"""Padding-free SFT batches: no padding, the same labels and loss as the padded batch of the same examples."""

import torch
from transformers import AutoModelForCausalLM

from tunekit.data import synthetic
from tunekit.data.collate import collate_examples, collate_padding_free, model_inputs
from tunekit.data.packing import pack_examples
from tunekit.data.sft import IGNORE_INDEX, DataConfig, tokenize_rows
from tunekit.data.sources import Rows
from tunekit.fast import FastPathConfig, enable_fast_paths
from tunekit.losses.sft import label_cross_entropy, token_cross_entropy
from tunekit.models.logprobs import label_logits


def examples(tokenizer, n=6):
    rows = Rows("mem", synthetic.sft_examples(n, seed=5))
    return tokenize_rows(rows, DataConfig(), tokenizer)[0]


def test_examples_lie_end_to_end_with_restarting_positions(tokenizer):
    items = examples(tokenizer)
    batch = collate_padding_free(items)
    lengths = [len(e.input_ids) for e in items]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["seq_lens"].tolist() == lengths
    assert batch["num_tokens"].item() == sum(lengths)
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    assert (batch["position_ids"][0, starts] == 0).all()
    # No example is trained to predict its first token from the example before it.
    assert (batch["labels"][0, starts] == IGNORE_INDEX).all()
    padded = collate_examples(items, pad_id=tokenizer.pad_token_id)
    assert batch["num_items"] == padded["num_items"]
    # Packed rows flatten to the same batch as their examples.
    rows = pack_examples(items, max_length=10_000)
    flat = collate_padding_free(rows)
    assert sorted(flat["seq_lens"].tolist()) == sorted(lengths)


def test_loss_equals_the_padded_loss(tiny_llama_path, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    items = examples(tokenizer)
    padded = collate_examples(items, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        expected = token_cross_entropy(model(**model_inputs(padded, model)).logits, padded["labels"])
        assert enable_fast_paths(model, FastPathConfig()).uses("padding-free")
        logits, targets, _ = label_logits(model, collate_padding_free(items))
        got = label_cross_entropy(logits, targets)
    assert logits.shape[0] == padded["num_items"]  # the head ran at label positions only
    assert got.num_units == expected.num_units == padded["num_items"]
    assert torch.allclose(got.loss_sum, expected.loss_sum, rtol=1e-5)
