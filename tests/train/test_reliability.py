"""Non-finite steps, loss spikes, preemption and an unwritable output_dir."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import tunekit.recipes.sft as sft_recipe
from tunekit.config import load_config
from tunekit.errors import ConfigError
from tunekit.recipes.sft import SFTConfig, run
from tunekit.train.checkpoint import latest_checkpoint
from tunekit.train.log import read_metrics
from tunekit.train.runner import TrainingStopped
from tunekit.train.signals import PREEMPTED_EXIT_CODE

BASE = [
    "data.synthetic_size=64",
    "data.eval_fraction=0",
    "train.progress=false",
    "train.micro_batch_size=4",
    "train.lr=1e-2",
]


def config(out, *overrides):
    return load_config(SFTConfig, None, [f"output_dir={out}", *BASE, *overrides])


def poisoned_step(monkeypatch, bad_calls, scale=float("nan")):
    """Make the SFT step return ``loss * scale`` on the given (1-based) calls."""
    real = sft_recipe.sft_step
    calls = {"n": 0}

    def step(model, batch, **options):
        calls["n"] += 1
        loss, metrics = real(model, batch, **options)
        return (loss * scale if calls["n"] in bad_calls else loss), metrics

    monkeypatch.setattr(sft_recipe, "sft_step", step)


def test_a_nan_step_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    poisoned_step(monkeypatch, {2})
    result = run(config(tmp_path / "run", "max_steps=4"))
    assert [r.get("skipped_nonfinite", False) for r in result.history] == [False, True, False, False]
    assert [r.get("nonfinite_steps_skipped", 0) for r in result.history] == [0, 1, 1, 1]
    assert all(
        torch.isfinite(t).all()
        for t in load_file(str(tmp_path / "run" / "final" / "adapter_model.safetensors")).values()
    )


def test_nan_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    poisoned_step(monkeypatch, set(range(3, 100)))
    with pytest.raises(TrainingStopped, match="3 steps in a row had a non-finite loss"):
        run(config(tmp_path / "run", "max_steps=10", "train.save_every=2", "train.max_bad_steps=3"))
    kept = latest_checkpoint(tmp_path / "run")
    assert kept is not None and kept.name == "step-4"  # steps 3 and 4 were skipped, so their weights are step 2's
    weights = load_file(str(kept / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_loss_spikes_are_logged_with_their_examples(tmp_path, monkeypatch):
    poisoned_step(monkeypatch, {14}, scale=100.0)
    result = run(config(tmp_path / "run", "max_steps=16", "train.log_every=4"))
    [spike] = [r for r in result.history if r.get("loss_spike")]
    assert spike["step"] == 14 and len(spike["spike_example_ids"]) == 4
    assert len([r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("loss_spike")]) == 1


def test_sigterm_checkpoints_and_the_run_resumes_to_the_same_result(tmp_path):
    args = [*BASE, "max_steps=40", "train.epochs=3", "train.save_every=100", "model.adapter.dropout=0.1"]
    reference = run(config(tmp_path / "ref", *args[len(BASE) :]))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunekit.recipes.sft", f"output_dir={out}", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / "metrics.jsonl").exists() and len(read_metrics(out / "metrics.jsonl")) >= 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "continue with resume=auto" in out_text + err
    stopped_at = int(latest_checkpoint(out).name.split("-")[1])
    assert 3 <= stopped_at < 40
    resumed = run(config(out, *args[len(BASE) :], "resume=auto"))
    assert resumed.history[-1]["step"] == 40
    a = load_file(str(tmp_path / "ref" / "final" / "adapter_model.safetensors"))
    b = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert reference.step == 40
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_unwritable_output_dir_is_refused_before_training(tmp_path, monkeypatch):
    from tunekit.train import rundir

    # Folder permissions do not bind root (as CI runs); the check itself is what is tested here.
    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="is not a writable folder"):
        run(config(tmp_path / "run", "max_steps=1"))
    assert not (tmp_path / "run").exists()


def test_output_dir_without_room_for_a_checkpoint(tmp_path, monkeypatch):
    import shutil

    from tunekit.train import rundir

    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1 << 20))
    with pytest.raises(ConfigError, match="MiB free, and this run needs .* MiB: room for two checkpoints"):
        run(config(tmp_path / "run", "max_steps=1"))
    assert not (tmp_path / "run").exists()


def test_random_kills_always_resume_to_the_uninterrupted_result(tmp_path, tiny_llama_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from kill_trials import kill_trials

    report = kill_trials(tmp_path, trials=10, seed=0, damage=True)
    assert len(report["resumed_from_step"]) == 10
    assert len(report["damaged_newest_checkpoint"]) >= 4, report  # the odd trials, unless a run finished first
    assert report["max_abs_diff"] <= 1e-6, report


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.adapter.r=4", "has shape [8, "),
        ("model.adapter.method=dora", "lacks 8 of this model's trainable weights"),
        ("model.adapter.target_modules=[q_proj]", "holds 8 weights this model does not train"),
        ("train.optimizer=sgd", "optimizer state (SGD expected) was written by another train.optimizer"),
    ],
)
def test_resuming_with_another_adapter_or_optimizer_is_refused_by_name(tmp_path, override, message):
    out = tmp_path / "run"
    run(config(out, "max_steps=2", "model.adapter.r=8", "model.adapter.target_modules=[q_proj,v_proj]"))
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    adapter = ["model.adapter.r=8", "model.adapter.target_modules=[q_proj,v_proj]"]
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        run(config(out, "max_steps=4", "resume=auto", *adapter, override))
    assert "checkpoints/step-2" in str(refused.value)
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing rewritten


def test_a_checkpoint_is_on_disk_before_it_is_marked_complete(tmp_path, monkeypatch):
    import tunekit.train.checkpoint as checkpoint

    synced = []
    real = checkpoint._fsync

    def record(path):
        synced.append((path.name, (path.parent / checkpoint.COMPLETE_MARKER).exists()))
        real(path)

    monkeypatch.setattr(checkpoint, "_fsync", record)
    run(config(tmp_path / "run", "max_steps=1"))
    files = {p.name for p in (tmp_path / "run" / "checkpoints" / "step-1").iterdir()} - {checkpoint.COMPLETE_MARKER}
    assert files == {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json"}
    assert {name for name, marked in synced if not marked} >= files  # each flushed before the marker was written


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    from tunekit.plot import load_run
    from tunekit.train.log import MetricsLog

    path = tmp_path / "metrics.jsonl"
    torn = "".join(f'{{"step": {s}, "loss": 1.0}}\n' for s in (1, 2, 3)) + '{"step": 4, "lo'
    path.write_text(torn)
    assert [r["step"] for r in load_run(tmp_path)] == [1, 2, 3]  # the charts of a killed run still draw
    MetricsLog(path, resume_step=2).close()
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 1.0}\n'
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')  # not a torn last line: named, not skipped
    with pytest.raises(ValueError):
        MetricsLog(path, resume_step=1)


def test_a_resumed_run_flags_the_spikes_the_uninterrupted_run_flags(tmp_path, monkeypatch):
    poisoned_step(monkeypatch, {14}, scale=100.0)
    whole = run(config(tmp_path / "whole", "max_steps=16"))
    monkeypatch.undo()
    run(config(tmp_path / "split", "max_steps=10", "train.save_every=10"))
    poisoned_step(monkeypatch, {4}, scale=100.0)  # the resumed run's 4th step is step 14
    resumed = run(config(tmp_path / "split", "max_steps=16", "resume=auto"))
    flagged = [[r["step"] for r in result.history if r.get("loss_spike")] for result in (whole, resumed)]
    assert flagged == [[14], [14]]


def test_losses_near_zero_are_no_spikes():
    from tunekit.train.spikes import MIN_EXCESS, SpikeDetector

    detector = SpikeDetector(factor=5.0)
    for _ in range(20):
        assert not detector.is_spike(0.001)
    assert not detector.is_spike(0.05)  # 50 times the median, but a few hundredths of a nat
    assert detector.is_spike(0.001 + 2 * MIN_EXCESS)


def test_a_full_disk_during_a_checkpoint_leaves_the_earlier_one_and_resume_works(tmp_path, monkeypatch):
    from tunekit.train import checkpoint

    real_save = checkpoint.save_file
    saves = {"n": 0}

    def disk_fills(tensors, path):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(28, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", disk_fills)
    with pytest.raises(checkpoint.CheckpointWriteError, match="checkpoint step-4 could not be written .* resume=auto"):
        run(config(tmp_path / "run", "max_steps=6", "train.save_every=2"))
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-2"]  # no partial .tmp-step-4 left
    monkeypatch.undo()
    resumed = run(config(tmp_path / "run", "max_steps=6", "train.save_every=2", "resume=auto"))
    assert resumed.step == 6 and (tmp_path / "run" / "final").is_dir()


def test_a_second_signal_stops_at_once_with_its_own_exit_code(capsys):
    from tunekit.train.signals import INTERRUPTED_EXIT_CODE, StopSignal

    with StopSignal() as stop:
        stop._handle(signal.SIGTERM, None)
        assert stop.received == signal.SIGTERM
        with pytest.raises(SystemExit) as exit_info:
            stop._handle(signal.SIGINT, None)
    assert exit_info.value.code == INTERRUPTED_EXIT_CODE
    assert "received a second signal (SIGINT) while stopping" in capsys.readouterr().err


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": ("trainable.safetensors", _truncate, "trainable.safetensors has"),
    "garbage state": ("state.json", lambda p: p.write_text("{not json"), "state.json has"),
    "truncated optimizer": ("optimizer.pt", _truncate, "optimizer.pt has"),
    "flipped byte": ("scheduler.pt", _flip_middle_byte, "scheduler.pt differs from what was written"),
}


def _interrupted_after_saving(monkeypatch, out, stop_step, *overrides):
    """Run until checkpoint ``stop_step`` is written, then stop as a kill would (no final save)."""
    from tunekit.train import runner

    real = runner.save_checkpoint

    def save_then_die(output_dir, step, *args, **kwargs):
        path = real(output_dir, step, *args, **kwargs)
        if step == stop_step:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(runner, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(config(out, *overrides))
    monkeypatch.undo()


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_still_ends_as_the_uninterrupted_one(
    tmp_path, monkeypatch, capsys, damage
):
    args = ["max_steps=6", "train.save_every=2", "model.adapter.dropout=0.1"]
    run(config(tmp_path / "whole", *args))
    out = tmp_path / "run"
    _interrupted_after_saving(monkeypatch, out, 4, *args)
    name, corrupt, reason = DAMAGE[damage]
    corrupt(out / "checkpoints" / "step-4" / name)
    capsys.readouterr()
    resumed = run(config(out, *args, "resume=auto"))
    said = capsys.readouterr()
    assert f"checkpoint {out / 'checkpoints' / 'step-4'} is damaged ({reason}" in said.err
    assert f"resuming from {out / 'checkpoints' / 'step-2'} at step 2" in said.out
    assert resumed.step == 6
    a = load_file(str(tmp_path / "whole" / "final" / "adapter_model.safetensors"))
    b = load_file(str(out / "final" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == sorted(set(steps))


def test_resume_naming_a_damaged_checkpoint_is_refused_before_anything_is_loaded(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupted_after_saving(monkeypatch, out, 4, "max_steps=6", "train.save_every=2")
    _truncate(out / "checkpoints" / "step-4" / "trainable.safetensors")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"names a damaged checkpoint: trainable.safetensors has \d+ bytes; \d+"):
        run(config(out, "max_steps=6", f"resume={out / 'checkpoints' / 'step-4'}"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_with_every_checkpoint_damaged_resume_auto_starts_over_and_says_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted_after_saving(monkeypatch, out, 2, "max_steps=4", "train.save_every=2")
    _truncate(out / "checkpoints" / "step-2" / "optimizer.pt")
    capsys.readouterr()
    resumed = run(config(out, "max_steps=4", "train.save_every=2", "resume=auto"))
    assert "step-2 is damaged" in capsys.readouterr().err
    assert resumed.step == 4 and [r["step"] for r in read_metrics(out / "metrics.jsonl")][-1] == 4


def test_checkpoints_of_an_abandoned_stretch_are_replaced_not_kept_over_the_current_ones(tmp_path):
    from tunekit.train.checkpoint import complete_checkpoints, prune_checkpoints

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        (root / f"step-{step}").mkdir(parents=True)
        (root / f"step-{step}" / "COMPLETE").write_text("")
    # The run resumed from step-4 (step-6 was damaged) and has just saved step-6 again.
    prune_checkpoints(tmp_path, keep=2, newest_step=6)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-4", "step-6"]
