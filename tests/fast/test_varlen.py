"""Padding-free attention: every example (and every continuation of a shared prompt) sees exactly what it sees
in a row of its own, and the switched model is plain sdpa for everything else."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunekit.fast import varlen
from tunekit.models.tiny import tiny_model_path


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-mistral"])
def model(request):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_path(request.param)).eval()


def alone(model, ids, positions=None):
    positions = torch.arange(len(ids)) if positions is None else positions
    with torch.no_grad():
        return model(input_ids=ids[None], position_ids=positions[None]).logits[0]


def test_examples_end_to_end_match_each_example_alone(model):
    # 300 tokens exceed tiny-mistral's sliding window of 256, so the window is exercised too.
    seqs = [torch.randint(3, 400, (n,)) for n in (5, 300, 17, 1)]
    expected = torch.cat([alone(model, s) for s in seqs])
    varlen.enable(model)
    assert varlen.enabled(model)
    ids = torch.cat(seqs)[None]
    positions = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    with torch.no_grad():
        given = model(input_ids=ids, position_ids=positions, segments=[(len(s),) for s in seqs]).logits[0]
        # Without segments the examples are read from the restarting position ids, as transformers does (when
        # no cache is kept).
        derived = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
    assert torch.allclose(given, expected, atol=1e-5)
    assert torch.allclose(derived, expected, atol=1e-5)


def test_continuations_of_a_shared_prompt_match_their_own_rows(model):
    prompt, first, second = torch.randint(3, 400, (40,)), torch.randint(3, 400, (7,)), torch.randint(3, 400, (230,))
    varlen.enable(model)
    assert varlen.enabled(model)
    with torch.no_grad():
        own_first = alone(model, torch.cat([prompt, first]))
        own_second = alone(model, torch.cat([prompt, second]))
        ids = torch.cat([prompt, first, second])[None]
        positions = torch.cat([torch.arange(40), 40 + torch.arange(7), 40 + torch.arange(230)])[None]
        shared = model(input_ids=ids, position_ids=positions, segments=[(40, 7, 230)]).logits[0]
    assert torch.allclose(shared[:40], own_first[:40], atol=1e-5)
    assert torch.allclose(shared[40:47], own_first[40:], atol=1e-5)
    assert torch.allclose(shared[47:], own_second[40:], atol=1e-5)


def test_padded_batches_and_generation_are_unchanged(model, tmp_path):
    seqs = [torch.randint(3, 400, (n,)) for n in (5, 17)]
    ids = torch.zeros(2, 20, dtype=torch.long)
    mask = torch.zeros(2, 20, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)], mask[b, : len(s)] = s, 1
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    generated = model.generate(input_ids=seqs[1][None], max_new_tokens=5, do_sample=False)
    varlen.enable(model)
    assert varlen.enabled(model)
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(before * mask[..., None], after * mask[..., None], atol=1e-6)
    assert torch.equal(model.generate(input_ids=seqs[1][None], max_new_tokens=5, do_sample=False), generated)
    # The switch is not saved: plain transformers loads the model as before.
    model.save_pretrained(tmp_path)
    assert varlen.IMPLEMENTATION not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_eager_attention_and_adapters_that_add_tokens_are_refused():
    from peft import PromptTuningConfig, get_peft_model

    eager = AutoModelForCausalLM.from_pretrained(tiny_model_path("tiny-llama"), attn_implementation="eager")
    assert "eager" in varlen.unsupported(eager, on_gpu=False)
    assert eager.config._attn_implementation == "eager"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path("tiny-llama"))
    prompted = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert "adds tokens" in varlen.unsupported(prompted, on_gpu=False)


def test_segments_must_cover_the_row(model):
    varlen.enable(model)
    assert varlen.enabled(model)
    with pytest.raises(ValueError, match="segments hold 5 tokens"):
        model(input_ids=torch.randint(3, 400, (1, 6)), position_ids=torch.arange(6)[None], segments=[(5,)])
