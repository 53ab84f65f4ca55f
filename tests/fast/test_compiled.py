"""train.compile: compiled transformer blocks compute what eager ones do, and change nothing a user keeps."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunekit.errors import ConfigError
from tunekit.fast import FastPathConfig, enable_fast_paths
from tunekit.fast.compiled import compile_layers
from tunekit.losses.reduce import label_log_softmax
from tunekit.models.adapters import AdapterConfig, apply_adapter
from tunekit.models.logprobs import logits_at


def lora_model(path: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    model = apply_adapter(model, AdapterConfig(method="lora", r=8, alpha=16))
    # A LoRA B of zeros would leave A without gradient; move it so that every adapter weight is exercised.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    enable_fast_paths(model, FastPathConfig())
    return model


def padding_free_batch(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, list, torch.Tensor]:
    """(input_ids [1, N], position_ids [1, N], segments, label positions [K]) of examples of ``lengths``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 400, (1, sum(lengths)), generator=generator)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    # Labels on the second half of each example, as a prompt / completion split would put them.
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    labelled = torch.cat([torch.arange(s + n // 2, s + n - 1) for s, n in zip(starts.tolist(), lengths, strict=True)])
    return ids, positions, [(n,) for n in lengths], labelled


def loss_and_grads(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, positions, segments, labelled = batch
    model.zero_grad(set_to_none=True)
    logits = logits_at(model, ids, positions, segments, labelled)
    loss = -label_log_softmax(logits, ids[0, labelled + 1]).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_compiled_blocks_give_eager_losses_and_gradients(tiny_llama_path):
    eager, compiled = lora_model(tiny_llama_path), lora_model(tiny_llama_path)
    keys = list(compiled.state_dict())
    assert compile_layers(compiled) == compiled.config.num_hidden_layers
    assert list(compiled.state_dict()) == keys  # adapter files and checkpoints keep their names

    # Batches of different lengths and example counts: dynamic shapes, and segments that vary per batch.
    for seed, lengths in enumerate([[17, 30, 9], [41, 12], [8, 8, 25, 19, 6]]):
        batch = padding_free_batch(lengths, seed)
        loss, grads = loss_and_grads(eager, batch)
        compiled_loss, compiled_grads = loss_and_grads(compiled, batch)
        torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
        assert grads.keys() == compiled_grads.keys() and len(grads) > 0
        for name, grad in grads.items():
            torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_forwards_without_autograd_run_eager(tiny_llama_path):
    """Generation and reference passes (no_grad) never trigger a compilation."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # graphs compiled by earlier tests would be reused, not counted
    model = lora_model(tiny_llama_path)
    compile_layers(model)
    before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        model(torch.randint(3, 400, (2, 11)))
        model.generate(torch.randint(3, 400, (1, 5)), max_new_tokens=4, do_sample=False)
    assert counters["stats"]["unique_graphs"] == before
    loss_and_grads(model, padding_free_batch([10, 14], 0))
    assert counters["stats"]["unique_graphs"] > before


def test_compiling_twice_wraps_once(tiny_llama_path):
    model = lora_model(tiny_llama_path)
    compile_layers(model)
    forwards = [layer.forward for layer in model.get_base_model().model.layers]
    compile_layers(model)
    assert [layer.forward for layer in model.get_base_model().model.layers] == forwards


def sft_overrides(out, *extra: str) -> list[str]:
    return [
        f"output_dir={out}",
        "train.progress=false",
        "train.micro_batch_size=4",
        "train.optimizer=sgd",
        "train.lr=0.05",
        "train.warmup_ratio=0",
        "max_steps=3",
        "data.synthetic_size=60",
        *extra,
    ]


def logged(out, key: str) -> list[float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if key in line]


def test_sft_with_train_compile_trains_as_eager_does(tmp_path):
    """Also with gradient checkpointing, whose recomputation in the backward runs the compiled block again."""
    from tunekit.config import load_config
    from tunekit.recipes.sft import SFTConfig, run

    compiled = ["train.compile=true", "model.gradient_checkpointing=true"]
    for name, extra in (("eager", []), ("compiled", compiled)):
        run(load_config(SFTConfig, "recipes/sft/tiny.yaml", sft_overrides(tmp_path / name, *extra)))
        assert (tmp_path / name / "final" / "adapter_model.safetensors").is_file()
    eager, compiled_losses = logged(tmp_path / "eager", "loss"), logged(tmp_path / "compiled", "loss")
    assert len(eager) == 3
    assert compiled_losses == pytest.approx(eager, rel=1e-4)


def test_dpo_with_train_compile_trains_as_eager_does(tmp_path):
    """The policy's forward is compiled; the reference pass (the adapter switched off, no autograd) is not."""
    from tunekit.config import load_config
    from tunekit.recipes.dpo import DPOConfig, run

    common = ["train.progress=false", "data.synthetic_size=24", "data.eval_fraction=0", "max_steps=3"]
    for name in ("eager", "compiled"):
        flag = f"train.compile={'true' if name == 'compiled' else 'false'}"
        run(load_config(DPOConfig, None, [f"output_dir={tmp_path / name}", *common, "train.micro_batch_size=4", flag]))
    for key in ("loss", "rewards/margin"):
        eager, compiled = logged(tmp_path / "eager", key), logged(tmp_path / "compiled", key)
        assert len(eager) == 3
        assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-6), key


def test_train_compile_without_a_cpp_compiler_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    from tunekit.config import load_config
    from tunekit.recipes.sft import SFTConfig, run

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        run(load_config(SFTConfig, "recipes/sft/tiny.yaml", sft_overrides(out, "train.compile=true")))
    assert not (out / "metrics.jsonl").exists()


def test_grpo_with_train_compile_samples_and_trains_as_eager_does(tmp_path, monkeypatch):
    """Compiled, the rollouts' decode steps are compiled too: the same completions, rewards and losses."""
    from tunekit.config import load_config
    from tunekit.fast import decode
    from tunekit.recipes.grpo import GRPOConfig, run

    compiled_rollouts = []
    real_compiled_step = decode.compiled_step
    monkeypatch.setattr(decode, "compiled_step", lambda: compiled_rollouts.append(1) or real_compiled_step())

    common = [
        "model.path=tiny-llama",
        "train.progress=false",
        "data.synthetic_size=16",
        "data.eval_fraction=0",
        "train.micro_batch_size=2",
        "sampling.num_generations=4",
        "sampling.max_new_tokens=6",
        "max_steps=3",
        # A reward that varies between completions of the tiny model, so that there is a gradient; SGD, which
        # (unlike Adam) keeps a difference in rounding a difference in rounding.
        "rewards=[{name: length_penalty, kwargs: {target_chars: 4}}]",
        "loss.kl_beta=0",
        "train.optimizer=sgd",
        "train.lr=0.05",
    ]
    for name in ("eager", "compiled"):
        flag = f"train.compile={'true' if name == 'compiled' else 'false'}"
        run(load_config(GRPOConfig, None, [f"output_dir={tmp_path / name}", *common, flag]))
        assert len(compiled_rollouts) == (3 if name == "compiled" else 0)  # one a step, none when eager
    for key in ("loss", "reward", "completion_length", "grad_norm"):
        eager, compiled = logged(tmp_path / "eager", key), logged(tmp_path / "compiled", key)
        assert len(eager) == 3
        assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-6), key
    assert max(logged(tmp_path / "eager", "grad_norm")) > 0
