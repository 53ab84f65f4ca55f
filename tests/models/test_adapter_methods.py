"""IA3, prompt tuning, prefix tuning, LLaMA-Adapter and rsLoRA: each trains with SFT, reloads with plain peft, and
combines with the recipes and options it can serve; the combinations it cannot serve are refused before training."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tunekit.config import load_config
from tunekit.data.collate import collate_examples, collate_packed, model_inputs
from tunekit.data.sft import Example
from tunekit.errors import ConfigError, ModelError
from tunekit.losses.sft import token_cross_entropy
from tunekit.models.adapters import AdapterConfig, apply_adapter
from tunekit.models.load import ModelConfig, load_model
from tunekit.models.logprobs import causal_lm_logits
from tunekit.models.policy import build_policy
from tunekit.models.reference import ReferencePolicy
from tunekit.recipes import dpo, export, grpo, pretrain, reward, sft
from tunekit.train.checkpoint import latest_checkpoint
from tunekit.train.log import read_metrics

METHODS = ["ia3", "prompt_tuning", "prefix_tuning", "llama_adapter"]
PEFT_TYPES = {
    "ia3": "IA3",
    "prompt_tuning": "PROMPT_TUNING",
    "prefix_tuning": "PREFIX_TUNING",
    "llama_adapter": "ADAPTION_PROMPT",
}
FAST = [
    "data.synthetic_size=64",
    "data.eval_fraction=0",
    "train.progress=false",
    "train.micro_batch_size=8",
    "train.warmup_ratio=0",
    "train.scheduler=constant",
    "max_steps=8",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """method -> the run directory of a short SFT run with that method (each trained once per module)."""
    runs = {}

    def get(method):
        if method not in runs:
            out = tmp_path_factory.mktemp(method) / "run"
            overrides = [f"output_dir={out}", f"model.adapter.method={method}", "model.adapter.num_virtual_tokens=8"]
            # The adaption prompts' gates start at zero and only open as they train: a larger rate shows it sooner.
            lr = "train.lr=1e-1" if method == "llama_adapter" else "train.lr=3e-2"
            sft.run(load_config(sft.SFTConfig, None, overrides + FAST + [lr]))
            runs[method] = out
        return runs[method]

    return get


def ids_and_mask():
    torch.manual_seed(3)
    ids = torch.randint(5, 400, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def plain_peft(final):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final).eval()


def as_trained(run_dir):
    """The model as training left it: tunekit's own build, with the last checkpoint's trained weights."""
    config = load_config(sft.SFTConfig, str(run_dir / "config.yaml"), [])
    model = apply_adapter(load_model(config.model), config.model.adapter)
    _, unexpected = model.load_state_dict(load_file(latest_checkpoint(run_dir) / "trainable.safetensors"), strict=False)
    assert not unexpected
    return model.eval()


def perturbed(model, scale=0.5):
    """``model`` with its trainable weights moved, as if trained (fresh prompt methods start near the base)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * scale)
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_reloads_with_plain_peft(trained, method):
    run_dir = trained(method)
    losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    final = run_dir / "final"
    assert json.loads((final / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPES[method]

    inputs = ids_and_mask()
    with torch.no_grad():
        ours = causal_lm_logits(as_trained(run_dir), inputs)
        reloaded = causal_lm_logits(plain_peft(final), inputs)
        base = load_model(ModelConfig()).eval()(**inputs).logits
    assert ours.shape == base.shape  # [B, T, V]: prompt tuning's virtual-token positions are dropped
    torch.testing.assert_close(reloaded, ours, atol=1e-5, rtol=0)
    assert (ours - base).abs().max() > 1e-2  # what was trained is in final/


def test_prompt_tuning_loss_equals_peft_own_loss():
    """Stripping the virtual tokens' logits gives the loss peft computes itself when handed the labels."""
    model = perturbed(apply_adapter(load_model(ModelConfig()), AdapterConfig(method="prompt_tuning")))
    inputs = ids_and_mask()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    # Position 0 is never a target (the BOS token); peft would predict it from the last virtual token.
    labels[:, 0] = -100
    with torch.no_grad():
        loss = token_cross_entropy(causal_lm_logits(model, inputs), labels)
        peft_loss = model(**inputs, labels=labels).loss
    assert causal_lm_logits(model, inputs).shape[1] == labels.shape[1]
    torch.testing.assert_close(loss.mean(), peft_loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rslora", [False, True])
def test_rslora_scales_by_alpha_over_sqrt_r(rslora):
    config = AdapterConfig(r=4, alpha=16, use_rslora=rslora, target_modules=["q_proj"])
    model = perturbed(apply_adapter(load_model(ModelConfig()), config))
    expected = 16 / math.sqrt(4) if rslora else 16 / 4
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(expected)
    # The forward pass applies that scale: output = W x + scale * B A x.
    x = torch.randn(5, layer.in_features)
    with torch.no_grad():
        update = layer(x) - layer.base_layer(x)
        low_rank = x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    torch.testing.assert_close(update, expected * low_rank, atol=1e-5, rtol=1e-5)


def test_rslora_is_saved_and_reloaded(tmp_path):
    out = tmp_path / "run"
    sft.run(
        load_config(
            sft.SFTConfig, None, [f"output_dir={out}", "model.adapter.use_rslora=true", *FAST[:-1], "max_steps=1"]
        )
    )
    assert json.loads((out / "final" / "adapter_config.json").read_text())["use_rslora"] is True
    q_proj = plain_peft(out / "final").base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(16 / math.sqrt(8))


@pytest.mark.parametrize("method", ["ia3", "llama_adapter"])
def test_packed_rows_give_the_unpacked_logits(method):
    """IA3 and adaption prompts leave attention's mask alone, so packing keeps its examples apart."""
    model = perturbed(apply_adapter(load_model(ModelConfig()), AdapterConfig(method=method, num_virtual_tokens=4)))
    torch.manual_seed(2)
    examples = [
        Example(input_ids=torch.randint(5, 400, (n,)).tolist(), labels=[0] * n, index=i)
        for i, n in enumerate([5, 8, 3])
    ]
    with torch.no_grad():
        packed = collate_packed([examples], pad_id=0)
        together = causal_lm_logits(model, model_inputs(packed, model))[0, :16]
        alone = [causal_lm_logits(model, model_inputs(collate_examples([e], pad_id=0), model))[0] for e in examples]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_switching_the_adapter_off_gives_the_base(method):
    """DPO's and GRPO's reference for a fresh adapter is the policy with its adapter switched off."""
    policy = perturbed(apply_adapter(load_model(ModelConfig()), AdapterConfig(method=method, num_virtual_tokens=4)))
    reference = ReferencePolicy.for_policy(policy)
    assert reference.kind == "adapter_disabled"
    inputs = ids_and_mask()
    ref = reference.run(policy, lambda m: causal_lm_logits(m, inputs))
    with torch.no_grad():
        base = load_model(ModelConfig()).eval()(**inputs).logits
        on = causal_lm_logits(policy, inputs)
    torch.testing.assert_close(ref, base, atol=1e-5, rtol=0)
    assert (on - base).abs().max() > 1e-2  # and back on afterwards


@pytest.mark.parametrize("method", ["ia3", "llama_adapter"])
def test_continued_adapter_keeps_a_frozen_reference_copy(trained, method):
    """DPO/GRPO continuing an earlier run's adapter: the reference is that adapter as saved, however far the
    policy moves."""
    final = trained(method) / "final"
    policy = build_policy(ModelConfig(path=str(final)))
    reference = ReferencePolicy.for_policy(policy)
    assert reference.kind == "reference_adapter"
    inputs = ids_and_mask()
    with torch.no_grad():
        saved = causal_lm_logits(plain_peft(final), inputs)
        torch.testing.assert_close(causal_lm_logits(policy.eval(), inputs), saved, atol=1e-5, rtol=0)
        perturbed(policy)
        moved = causal_lm_logits(policy, inputs)
    ref = reference.run(policy, lambda m: causal_lm_logits(m, inputs))
    torch.testing.assert_close(ref, saved, atol=1e-5, rtol=0)
    assert (moved - saved).abs().max() > 1e-2
    torch.testing.assert_close(causal_lm_logits(policy, inputs), moved, atol=1e-5, rtol=0)  # the policy is back


def test_dpo_continuing_a_llama_adapter_starts_at_its_reference(trained, tmp_path):
    """Policy == reference before the first update, so the first DPO loss is exactly log 2."""
    final = trained("llama_adapter") / "final"
    overrides = [f"output_dir={tmp_path / 'dpo'}", f"model.path={final}", "train.progress=false", "max_steps=2"]
    config = load_config(dpo.DPOConfig, None, overrides + ["data.synthetic_size=16", "data.eval_fraction=0"])
    result = dpo.run(config)
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert (
        json.loads((tmp_path / "dpo" / "final" / "adapter_config.json").read_text())["peft_type"] == "ADAPTION_PROMPT"
    )


def fake_adapter(directory, peft_type):
    """An adapter directory as far as the checks read it: only adapter_config.json."""
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(
        json.dumps({"peft_type": peft_type, "base_model_name_or_path": "tiny-llama"})
    )
    return directory


REFUSED = [
    # (recipe, overrides, error, words the message must hold)
    ("sft", ["model.adapter.method=prompt_tuning", "data.packing=true"], ConfigError, "data.packing=true"),
    ("sft", ["model.adapter.method=prefix_tuning", "data.packing=true"], ConfigError, "4D block-diagonal"),
    ("pretrain", ["model.adapter.method=prompt_tuning"], ConfigError, "data.packing=false"),
    (
        "sft",
        ["model.adapter.method=prefix_tuning", "model.gradient_checkpointing=true"],
        ConfigError,
        "gradient_checkpointing",
    ),
    ("reward", ["model.adapter.method=prompt_tuning"], ConfigError, "depend on padding"),
    ("reward", ["model.adapter.method=llama_adapter"], ConfigError, "score head"),
    ("grpo", ["model.adapter.method=prompt_tuning"], ConfigError, "left-padded"),
    ("dpo", ["model.path={prompt_tuning}"], ModelError, "cannot load a prompt-learning adapter as trainable"),
    ("grpo", ["model.path={prefix_tuning}"], ModelError, "cannot load a prompt-learning adapter as trainable"),
    ("sft", ["model.path={prefix_tuning}"], ModelError, "cannot be merged"),
    ("reward", ["model.path={llama_adapter}"], ModelError, "cannot be merged"),
    ("dpo", ["model.path={llama_adapter}", "model.adapter.method=full"], ModelError, "cannot be merged"),
]


@pytest.mark.parametrize(("recipe", "overrides", "error", "words"), REFUSED)
def test_refused_combinations_fail_before_the_run_starts(tmp_path, recipe, overrides, error, words):
    adapters = {
        m: fake_adapter(tmp_path / m, PEFT_TYPES[m]) for m in ("prompt_tuning", "prefix_tuning", "llama_adapter")
    }
    overrides = [o.format(**adapters) for o in overrides]
    module, cls = {
        "sft": (sft, sft.SFTConfig),
        "pretrain": (sft, pretrain.PretrainConfig),
        "reward": (reward, reward.RewardConfig),
        "dpo": (dpo, dpo.DPOConfig),
        "grpo": (grpo, grpo.GRPOConfig),
    }[recipe]
    out = tmp_path / "run"
    extra = ["model.path=tiny-llama"] if recipe == "grpo" and not any("model.path" in o for o in overrides) else []
    if recipe == "grpo" and not any("adapter.method" in o for o in overrides):
        extra.append("model.adapter.method=lora")  # the default trains the tiny model fully; these cases are adapters
    config = load_config(cls, None, [f"output_dir={out}", *extra, *overrides])
    with pytest.raises(error, match=words):
        module.run(config)
    assert not out.exists()


def test_export_refuses_a_prompt_adapter(tmp_path):
    adapter = fake_adapter(tmp_path / "final", "PREFIX_TUNING")
    config = export.ExportConfig(adapter=str(adapter), output_dir=str(tmp_path / "merged"))
    with pytest.raises(ModelError, match="prefix_tuning adapter, which cannot be merged"):
        export.export(config)


def test_llama_adapter_refuses_an_architecture_peft_does_not_know():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    with pytest.raises(ModelError, match="llama_adapter supports .* this model is 'qwen2'"):
        apply_adapter(Qwen2ForCausalLM(config), AdapterConfig(method="llama_adapter"))


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (AdapterConfig(method="ia3", target_modules=["q_proj"]), r"feedforward_modules \['down_proj'\]"),
        (AdapterConfig(method="llama_adapter", adapter_layers=5), "adapter_layers must be between 1 and 4"),
    ],
)
def test_bad_method_settings_name_their_key(config, words):
    with pytest.raises(ModelError, match=words):
        apply_adapter(load_model(ModelConfig()), config)


def test_no_virtual_tokens_is_refused_when_the_adapter_config_is_built():
    with pytest.raises(ValueError, match="num_virtual_tokens must be at least 1, got 0"):
        AdapterConfig(method="prompt_tuning", num_virtual_tokens=0)
