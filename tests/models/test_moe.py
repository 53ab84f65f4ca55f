"""LoRA on mixture-of-experts models (the embedded tiny-mixtral and tiny-qwen-moe): the fused 3-D expert weights
are adapted through peft's target_parameters, the runs reload with plain peft, resume exactly, and SFT adds the
router's load-balancing loss as the model's own loss does."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tunekit.config import load_config
from tunekit.errors import ModelError
from tunekit.losses import LossOutput
from tunekit.losses.sft import token_cross_entropy, with_router_aux_loss
from tunekit.models.adapters import AdapterConfig, apply_adapter, build_peft_config, count_parameters
from tunekit.models.load import ModelConfig, load_model, use_router_aux_loss
from tunekit.models.logprobs import causal_lm_forward
from tunekit.recipes import dpo, sft
from tunekit.train.log import read_metrics

MOE_MODELS = ["tiny-mixtral", "tiny-qwen-moe"]
FAST = [
    "data.synthetic_size=64",
    "data.eval_fraction=0",
    "train.progress=false",
    "train.micro_batch_size=8",
    "train.warmup_ratio=0",
    "train.scheduler=constant",
    "train.lr=1e-2",
]


def sft_run(out, *overrides):
    return sft.run(load_config(sft.SFTConfig, None, [f"output_dir={out}", *FAST, *overrides]))


def batch():
    torch.manual_seed(3)
    ids = torch.randint(5, 400, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask}, labels


@pytest.mark.parametrize("name", MOE_MODELS)
def test_all_linear_lora_adapts_every_fused_expert_weight(name):
    model = load_model(ModelConfig(path=name))
    config = build_peft_config(model, AdapterConfig())
    assert sorted(config.target_parameters) == ["experts.down_proj", "experts.gate_up_proj"]
    assert "gate" not in config.target_modules  # the router is not a Linear and stays as it is
    counts = count_parameters(apply_adapter(model, AdapterConfig(r=8)))
    layers = model.config.num_hidden_layers
    hidden, width = model.config.hidden_size, model.config.intermediate_size
    if name == "tiny-qwen-moe":
        width = model.config.moe_intermediate_size
    # LoRA on a [E, out, in] stack: A is [r * E, in], B is [out, r * E]; gate_up is [E, 2 * width, hidden].
    per_layer = 8 * 4 * ((hidden + 2 * width) + (width + hidden))
    assert counts["experts"] == layers * per_layer


def test_target_modules_can_name_the_experts_or_leave_them_out():
    model = load_model(ModelConfig(path="tiny-mixtral"))
    only_experts = build_peft_config(model, AdapterConfig(target_modules=["q_proj", "experts.down_proj"]))
    assert only_experts.target_parameters == ["experts.down_proj"] and only_experts.target_modules == {"q_proj"}
    all_experts = build_peft_config(model, AdapterConfig(target_modules=["experts"]))
    assert sorted(all_experts.target_parameters) == ["experts.down_proj", "experts.gate_up_proj"]
    attention = build_peft_config(model, AdapterConfig(method="dora", target_modules=["q_proj", "v_proj"]))
    assert not attention.target_parameters
    with pytest.raises(ModelError, match=r"\['experts.up'\] match no linear layer .* fused expert weights: "):
        build_peft_config(model, AdapterConfig(target_modules=["experts.up"]))


@pytest.mark.parametrize(
    ("adapter", "setting"), [({"method": "dora"}, "method=dora"), ({"dropout": 0.1}, "dropout=0.1")]
)
def test_dora_or_dropout_on_the_experts_is_refused_by_name(adapter, setting):
    model = load_model(ModelConfig(path="tiny-mixtral"))
    with pytest.raises(ModelError, match=f"model.adapter.{setting} cannot adapt this mixture-of-experts model"):
        build_peft_config(model, AdapterConfig(**adapter))


@pytest.mark.parametrize("name", MOE_MODELS)
def test_lora_sft_trains_the_experts_and_reloads_with_plain_peft(tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    sft_run(out, f"model.path={name}", "max_steps=8", "train.save_every=8")
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert losses[-1] < losses[0]
    saved = load_file(out / "final" / "adapter_model.safetensors")
    assert any("experts" in key for key in saved)
    # The model as training left it (tunekit's build with the checkpoint's weights) against plain peft's reload.
    config = load_config(sft.SFTConfig, str(out / "config.yaml"), [])
    ours = apply_adapter(load_model(config.model), config.model.adapter)
    ours.load_state_dict(load_file(out / "checkpoints" / "step-8" / "trainable.safetensors"), strict=False)
    base = json.loads((out / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "final")
    inputs, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(**inputs).logits, plain.eval()(**inputs).logits, atol=1e-5, rtol=0)
        untrained = AutoModelForCausalLM.from_pretrained(base).eval()(**inputs).logits
    assert (plain(**inputs).logits - untrained).abs().max() > 1e-3


def test_a_moe_run_resumes_exactly(tmp_path):
    args = ["model.path=tiny-mixtral", "train.save_every=2", "router_aux_loss_coef=0.01", "train.micro_batch_size=4"]
    sft_run(tmp_path / "whole", *args, "max_steps=3")
    sft_run(tmp_path / "split", *args, "max_steps=2")
    sft_run(tmp_path / "split", *args, "max_steps=3", "resume=auto")
    a = load_file(tmp_path / "whole" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", [["model.quantization=4bit"], ["model.adapter.method=full"]], ids=["qlora", "full"])
def test_qlora_and_full_fine_tuning_train_a_moe_model(tmp_path, variant):
    result = sft_run(tmp_path / "run", "model.path=tiny-mixtral", "max_steps=3", *variant)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0]


def test_dpo_trains_a_moe_policy(tmp_path):
    overrides = [f"output_dir={tmp_path / 'dpo'}", "model.path=tiny-mixtral", *FAST, "max_steps=4", "train.lr=5e-3"]
    result = dpo.run(load_config(dpo.DPOConfig, None, overrides))
    assert result.step == 4 and (tmp_path / "dpo" / "final" / "adapter_model.safetensors").is_file()


def test_router_loss_is_added_per_token_as_the_models_own_loss_adds_it():
    """Against transformers' own loss with labels: cross-entropy + router_aux_loss_coef * aux_loss."""
    model = load_model(ModelConfig(path="tiny-mixtral")).eval()
    assert use_router_aux_loss(model, 0.05) == 0.05 and model.config.router_aux_loss_coef != 0.05
    inputs, labels = batch()
    with torch.no_grad():
        logits, aux = causal_lm_forward(model, inputs)
        ours = with_router_aux_loss(token_cross_entropy(logits, labels), aux, 0.05)
        model.router_aux_loss_coef = 0.05  # the model keeps the coefficient its config had when it was built
        theirs = model(**inputs, labels=labels).loss
    torch.testing.assert_close(ours.mean(), theirs, atol=1e-5, rtol=1e-5)
    assert use_router_aux_loss(model, 0.0) == 0.0 and causal_lm_forward(model, inputs)[1] is None
    dense = load_model(ModelConfig(path="tiny-llama"))
    assert use_router_aux_loss(dense, 0.05) == 0.0


def test_router_loss_weighting_by_hand():
    base = LossOutput(torch.tensor(12.0), torch.tensor(4), {"x": torch.tensor(1.0)})
    out = with_router_aux_loss(base, torch.tensor(2.0), 0.5)
    assert out.loss_sum.item() == 12.0 + 0.5 * 2.0 * 4 and out.num_units.item() == 4
    assert out.metrics["router_aux_loss"].item() == 2.0 and out.metrics["x"].item() == 1.0


def test_the_first_step_loss_carries_the_weighted_router_loss(tmp_path):
    plain = sft_run(tmp_path / "a", "model.path=tiny-mixtral", "max_steps=1", "router_aux_loss_coef=0")
    weighted = sft_run(tmp_path / "b", "model.path=tiny-mixtral", "max_steps=1", "router_aux_loss_coef=0.5")
    first, second = plain.history[0], weighted.history[0]
    assert "router_aux_loss" not in first
    assert second["loss"] - first["loss"] == pytest.approx(0.5 * second["router_aux_loss"], rel=1e-4)
