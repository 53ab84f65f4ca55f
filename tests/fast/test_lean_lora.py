"""The lean LoRA forward computes what peft computes, and hands everything it does not cover back to peft."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunekit.fast import lean_lora
from tunekit.fast.lean_lora import use_lean_forward
from tunekit.models.tiny import tiny_model_path


def lora_model(dtype: torch.dtype = torch.float32, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path("tiny-llama"), dtype=dtype)
    config = LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, **options)
    model = get_peft_model(base, config)
    # B starts at zero; give it values so that the adapters take part.
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def run(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the adapters' gradients of a summed-logits loss."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    logits.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach().float(), grads


def peft_forward(model: torch.nn.Module) -> None:
    for module in model.modules():
        module.__dict__.pop("forward", None)


@pytest.fixture
def ids():
    return torch.randint(3, 400, (2, 48))


def merged_calls(monkeypatch) -> list[int]:
    """Count the layer calls that take the merged-weight route."""
    calls: list[int] = []
    apply = lean_lora._MergedLoRA.apply

    def counting(*args):
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(lean_lora._MergedLoRA, "apply", counting)
    return calls


# The tiny model's layers are 128 x 128 (q, o), 64 x 128 (k, v), 352 x 128 (gate, up) and 128 x 352 (down). The
# merged route pays from 129, 86 and 188 rows on: 8 rows take it nowhere, 96 rows in k and v only, 256 everywhere.
@pytest.mark.parametrize(("shape", "merged"), [((1, 8), 0), ((2, 48), 2 * 4), ((4, 64), 7 * 4)])
def test_same_logits_and_gradients_as_peft(shape, merged, monkeypatch):
    ids = torch.randint(3, 400, shape)
    model = lora_model()
    assert use_lean_forward(model) == 4 * 7  # every adapted linear of the 4 layers
    calls = merged_calls(monkeypatch)
    lean_logits, lean_grads = run(model, ids)
    assert len(calls) == merged
    peft_forward(model)
    logits, grads = run(model, ids)
    torch.testing.assert_close(lean_logits, logits, atol=1e-5, rtol=1e-5)
    assert lean_grads.keys() == grads.keys() and len(grads) == 2 * 4 * 7
    for name, grad in grads.items():
        torch.testing.assert_close(lean_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_no_grad_and_autocast_forwards_never_merge(monkeypatch):
    ids = torch.randint(3, 400, (4, 64))
    model = lora_model()
    use_lean_forward(model)
    calls = merged_calls(monkeypatch)
    with torch.no_grad():
        model(input_ids=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids).logits.float().sum().backward()
    assert calls == []


def test_disabled_adapters_and_dora_are_peft_unchanged(ids):
    model = lora_model()
    use_lean_forward(model)
    with torch.no_grad(), model.disable_adapter():
        disabled = model(input_ids=ids).logits
        plain = model.get_base_model()(input_ids=ids).logits
    assert torch.equal(disabled, plain)

    dora = lora_model(use_dora=True)
    with torch.no_grad():
        expected = dora(input_ids=ids).logits
        use_lean_forward(dora)
        assert torch.equal(dora(input_ids=ids).logits, expected)


def test_bf16_base_with_fp32_adapters_outside_autocast_is_peft_exactly(ids):
    model = lora_model(torch.bfloat16)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        use_lean_forward(model)
        assert torch.equal(model(input_ids=ids).logits, expected)


def test_under_autocast_it_matches_peft_to_bf16_precision(ids):
    model = lora_model(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids).logits.float()
        use_lean_forward(model)
        lean = model(input_ids=ids).logits.float()
    assert lean.dtype == expected.dtype
    torch.testing.assert_close(lean, expected, atol=0.05, rtol=0.05)


def test_a_compiled_layer_compiles_once_across_the_row_threshold():
    """Under train.compile the route does not depend on the row count, which would recompile the block each time
    a batch crossed the threshold."""
    from torch._dynamo.utils import counters

    model = lora_model()
    use_lean_forward(model)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    compiled = torch.compile(layer, dynamic=True)
    torch._dynamo.reset()
    counters.clear()
    for rows in (300, 8, 200):  # the threshold of this 128 x 128 layer is 129 rows
        x = torch.randn(rows, 128, requires_grad=True)
        compiled(x).square().sum().backward()
        expected = layer.base_layer(x) + layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
        torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
