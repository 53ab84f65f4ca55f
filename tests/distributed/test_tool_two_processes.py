"""GRPO with tools on two processes (torchrun, gloo) gives the run one process gives with the same global batch: the
tool calls, their masked answers and the rewards on whole trajectories split across processes without changing
anything. The policy is scripted (tests/tools/scripted.py) so that calls happen on an untrained model."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.tools import scripted
from tunekit.config import load_config
from tunekit.recipes.grpo import GRPOConfig, run
from tunekit.rl import tool_rollout
from tunekit.rl.rollout import generate_turn
from tunekit.train.log import read_metrics

ARGS = [
    "model.path=tiny-llama",
    "model.adapter.method=lora",
    "data.path=synthetic:big-arithmetic-tools",
    "data.synthetic_size=4",
    "data.max_eval_examples=2",
    "sampling.num_generations=2",
    "sampling.max_new_tokens=4",
    "sampling.temperature=0",
    "tools.use=[{name: calculator, cost: 0.5}]",
    "rewards=[{name: length_penalty, kwargs: {target_chars: 40}}]",
    "sample_every=0",
    "train.progress=false",
    "max_steps=2",
    "train.lr=1e-1",
    "train.eval_every=2",
    "train.optimizer=sgd",
]
GLOO_START_ABORT = "terminate called without an active exception"  # see tests/distributed/test_two_processes.py


def test_grpo_with_tools_on_two_processes_equals_one(tmp_path, monkeypatch):
    monkeypatch.setattr(tool_rollout, "generate_turn", scripted.scripted(generate_turn))
    one = run(load_config(GRPOConfig, None, [f"output_dir={tmp_path / 'one'}", *ARGS, "train.micro_batch_size=2"]))
    assert any(r.get("tool_calls") for r in one.history)  # the scripted rows did call the calculator
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    args = [f"output_dir={tmp_path / 'two'}", *ARGS, "train.micro_batch_size=1"]
    for attempt in range(2):  # gloo's rare start-up abort is retried once, on another port
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--master_port", str(29630 + 100 * attempt), "tests/tools/scripted.py", *args]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0 or "2 processes" in proc.stderr or GLOO_START_ABORT not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two] == [r["step"] for r in one.history]
    for a, b in zip(one.history, two, strict=True):
        for key in ("loss", "reward", "tool_calls", "eval/reward", "eval/greedy/reward"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a["step"])
    w1 = load_file(str(tmp_path / "one" / "final" / "adapter_model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "final" / "adapter_model.safetensors"))
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], atol=1e-5, rtol=0)
