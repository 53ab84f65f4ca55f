"""SFT end to end on the tiny model: every adapter method trains, and final/ loads with plain peft."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tunekit.config import load_config
from tunekit.recipes.sft import SFTConfig, run
from tunekit.train.log import read_metrics

FAST = [
    "data.synthetic_size=96",
    "data.eval_fraction=0",
    "train.progress=false",
    "train.lr=5e-3",
    "train.micro_batch_size=8",
    "train.epochs=4",
    "train.warmup_ratio=0",
    "train.scheduler=constant",
]


def first_and_last_loss(run_dir):
    losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]
    return sum(losses[:3]) / 3, sum(losses[-3:]) / 3


def generate(model, tokenizer):
    inputs = tokenizer("Question: What is 2 + 2?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("lora", []),
        ("dora", []),
        ("qlora", ["model.quantization=4bit", "train.optimizer=paged_adamw_8bit"]),
        ("full", ["train.lr=1e-3"]),
    ],
)
def test_adapter_method_trains_and_reloads_with_plain_peft(tmp_path, method, extra):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_method = {"qlora": "lora"}.get(method, method)
    out = tmp_path / method
    run(load_config(SFTConfig, None, [f"output_dir={out}", f"model.adapter.method={adapter_method}", *FAST, *extra]))
    first, last = first_and_last_loss(out)
    assert last < first - 0.3, (first, last)

    final = out / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(final)
    else:
        base_path = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), final)
        if method == "dora":
            assert json.loads((final / "adapter_config.json").read_text())["use_dora"] is True
    generate(model.eval(), tokenizer)


def test_default_command_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [sys.executable, "-m", "tunekit.recipes.sft", f"output_dir={tmp_path / 'run'}", "train.progress=false"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    assert records[-1]["eval/loss"] < records[0]["loss"]
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_the_terminal_shows_tunekit_and_not_its_libraries_unless_asked(tmp_path, verbose):
    env = {**os.environ, "TUNEKIT_VERBOSE": verbose, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "tunekit.recipes.sft", f"output_dir={tmp_path / 'run'}", "max_steps=1"]
    done = subprocess.run([*argv, "train.progress=false"], capture_output=True, text=True, env=env, check=True)
    chatter = [m for m in ("Loading weights", "FutureWarning", "Setting accelerator") if m in done.stderr]
    assert "fast paths: lean-lora" in done.stderr
    if verbose == "0":
        assert chatter == []
    else:  # what the libraries print depends on their versions; transformers' loading bar is always there
        assert "Loading weights" in chatter


# Runs in a fresh interpreter: bitsandbytes is made to take the path of CPUs with AVX512-BF16, where its import
# tries to fetch a 4-bit kernel and logs a notice when it cannot ("kernels" is made unimportable, so it cannot).
BITSANDBYTES_PROBE = """
import importlib.abc, importlib.util, sys

class AsIfAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.backends.cpu.ops":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            import bitsandbytes.functional
            bitsandbytes.functional.has_avx512bf16 = lambda: True
            run_module(module)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, AsIfAvx512Bf16())
sys.modules["kernels"] = None
from tunekit.recipes.common import quiet_dependencies
quiet_dependencies()
import bitsandbytes
"""


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_bitsandbytes_kernel_notice_is_quiet_unless_asked(verbose):
    env = {**os.environ, "TUNEKIT_VERBOSE": verbose}
    done = subprocess.run([sys.executable, "-c", BITSANDBYTES_PROBE], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("Failed to load CPU gemm_4bit_forward" in done.stderr) == (verbose == "1")
