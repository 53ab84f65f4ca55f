"""Packed rows must give every example exactly the logits and losses it gets on its own."""

import torch
import torch.nn.functional as F

from tunekit.data import synthetic
from tunekit.data.collate import collate_examples, collate_packed, model_inputs
from tunekit.data.packing import pack_examples
from tunekit.data.sft import DataConfig, tokenize_rows
from tunekit.data.sources import Rows
from tunekit.losses.sft import IGNORE_INDEX


def examples(tokenizer, n=12):
    rows = Rows("mem", synthetic.sft_examples(n, seed=3))
    return tokenize_rows(rows, DataConfig(), tokenizer)[0]


def test_packing_fits_and_keeps_every_example(tokenizer):
    items = examples(tokenizer, 40)
    rows = pack_examples(items, max_length=64)
    assert sorted(e.index for row in rows for e in row) == sorted(e.index for e in items)
    assert all(sum(len(e.input_ids) for e in row) <= 64 for row in rows)
    assert len(rows) < len(items) / 2


def per_example_outputs(model, batch, packed_rows=None):
    logits = model(**model_inputs(batch, model)).logits
    # [B, T - 1] next-token losses, 0 where the label is ignored
    losses = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    outputs = []
    if packed_rows is None:
        for b, n in enumerate(batch["attention_mask"].sum(1).tolist()):
            outputs.append((logits[b, :n], losses[b, : n - 1]))
        return outputs
    for b, row in enumerate(packed_rows):
        start = 0
        for e in row:
            n = len(e.input_ids)
            outputs.append((logits[b, start : start + n], losses[b, start : start + n - 1]))
            start += n
    return outputs


def test_packed_logits_and_losses_equal_unpacked(tokenizer, tiny_llama_path):
    from transformers import AutoModelForCausalLM

    items = examples(tokenizer)
    rows = pack_examples(items, max_length=96)
    assert any(len(row) > 1 for row in rows)
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, attn_implementation=attn).eval()
        with torch.no_grad():
            packed = per_example_outputs(model, collate_packed(rows, tokenizer.pad_token_id), rows)
            order = [e for row in rows for e in row]
            single = per_example_outputs(model, collate_examples(order, tokenizer.pad_token_id))
        for (pl, ploss), (sl, sloss) in zip(packed, single, strict=True):
            assert torch.allclose(pl, sl, atol=1e-5), attn
            assert torch.allclose(ploss, sloss, atol=1e-5), attn


def test_position_ids_restart_and_padding_never_attends_out(tokenizer):
    rows = pack_examples(examples(tokenizer, 5), max_length=200)
    batch = collate_packed(rows, tokenizer.pad_token_id, pad_to_multiple_of=64)
    mask = batch["attention_mask"][0, 0]
    lengths = [len(e.input_ids) for e in rows[0]]
    assert batch["position_ids"][0, : lengths[0]].tolist() == list(range(lengths[0]))
    assert batch["position_ids"][0, lengths[0]].item() == 0
    # The first token of the second example sees only itself.
    assert mask[lengths[0]].nonzero().flatten().tolist() == [lengths[0]]
    assert batch["num_items"].item() == sum(sum(lbl != -100 for lbl in e.labels) for e in rows[0])
