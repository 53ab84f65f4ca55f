"""Experiment trackers (train.report_to): what each tracker holds is read back with its own reader and compared with
metrics.jsonl and config.yaml; a resumed run continues the same tracker run; bad names and missing packages stop
the run before anything is written. Offline: TensorBoard's event files, MLflow's local file store, W&B's offline
mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

import tunekit.train.trackers as trackers_module
from tunekit.config import load_config
from tunekit.errors import USER_ERROR_EXIT_CODE, ConfigError, exit_on_user_error
from tunekit.recipes import sft
from tunekit.recipes.grpo import GRPOConfig
from tunekit.recipes.grpo import run as run_grpo
from tunekit.recipes.sft import SFTConfig, run
from tunekit.train.log import read_metrics
from tunekit.train.trackers import IDS_FILE, flat_config, scalars

BASE = ["data.synthetic_size=64", "train.progress=false", "train.micro_batch_size=4", "train.save_every=2"]


def sft_config(out: Path, *overrides: str) -> SFTConfig:
    return load_config(SFTConfig, None, [f"output_dir={out}", *BASE, *overrides])


def cut_after(run_dir: Path, step: int, to: Path) -> Path:
    """A copy of ``run_dir`` as a run killed after ``step``'s checkpoint would leave it: later checkpoints and
    final/ gone, everything it logged (metrics.jsonl, the trackers' files) still there."""
    shutil.copytree(run_dir, to)
    for checkpoint in (to / "checkpoints").iterdir():
        if int(checkpoint.name.removeprefix("step-")) > step:
            shutil.rmtree(checkpoint)
    shutil.rmtree(to / "final")
    return to


def expected_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as tag -> [(step, value)], the numbers a tracker gets."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        for key, value in scalars(record).items():
            out.setdefault(key, []).append((record["step"], float(value)))
    return out


def test_tensorboard_events_equal_metrics_jsonl_also_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    whole = tmp_path / "whole"
    run(sft_config(whole, "max_steps=4", "train.eval_every=2", "train.report_to=tensorboard"))
    # The killed run had logged steps 3 and 4 to TensorBoard; the resumed run logs them again, and TensorBoard's
    # reader keeps one of each, as metrics.jsonl does.
    cut = cut_after(whole, 2, tmp_path / "cut")
    run(sft_config(cut, "max_steps=4", "train.eval_every=2", "train.report_to=tensorboard", "resume=auto"))

    for run_dir in (whole, cut):
        events = EventAccumulator(str(run_dir / "trackers" / "tunekit"))
        events.Reload()
        expected = expected_scalars(run_dir)
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "epoch", "eval/loss"} <= set(expected)
        assert sorted(events.Tags()["scalars"]) == sorted(expected)
        for tag, points in expected.items():
            logged = [(e.step, e.value) for e in events.Scalars(tag)]
            assert [s for s, _ in logged] == [s for s, _ in points], tag
            # TensorBoard stores scalars as float32.
            assert [v for _, v in logged] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-30), tag
    assert [r["step"] for r in read_metrics(cut / "metrics.jsonl")] == [0, 1, 2, 3, 4]


def test_mlflow_file_store_holds_the_metrics_and_params_and_a_resume_continues_the_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    whole = tmp_path / "whole"
    run(sft_config(whole, "max_steps=4", "train.report_to=mlflow", "train.tracker_project=tk-test"))
    run_id = json.loads((whole / IDS_FILE).read_text())["mlflow"]["run_id"]

    client = MlflowClient(store)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "whole"
    assert client.get_experiment(logged.info.experiment_id).name == "tk-test"
    config = yaml.safe_load((whole / "config.yaml").read_text())
    assert logged.data.params == {key: str(value) for key, value in flat_config(config).items()}
    assert logged.data.params["train.report_to"] == '["mlflow"]'
    for tag, points in expected_scalars(whole).items():
        history = [(m.step, m.value) for m in client.get_metric_history(run_id, tag)]
        assert history == points, tag

    # A resumed run writes to the same MLflow run; the params it already holds keep their first values.
    cut = cut_after(whole, 2, tmp_path / "cut")
    run(sft_config(cut, "max_steps=4", "train.report_to=mlflow", "train.tracker_project=tk-test", "resume=auto"))
    assert json.loads((cut / IDS_FILE).read_text())["mlflow"]["run_id"] == run_id
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.params["resume"] == "None"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 3, 4]


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B run file (``run-<id>.wandb``): a 7-byte header, then a LevelDB-style log of
    32 KiB blocks whose chunks each carry a 7-byte header (checksum, length, type: 1 whole, 2 first, 3 middle,
    4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, block, pending, records = path.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block  # a block's tail too short for a header is padding
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(pending))
            pending = b""
    return records


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode, writing under ``tmp_path/wandb``; its service process is shut down after the test."""
    import wandb

    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    yield
    wandb.teardown()


def finish_wandb() -> None:
    """Wait for W&B's service process: it writes the run file and can still be flushing it when the run has
    finished (a process that exits waits for it in its atexit hook)."""
    import wandb

    wandb.teardown()


def test_wandb_offline_writes_its_run_and_a_resumed_run_keeps_the_id(tmp_path, offline_wandb):
    out = tmp_path / "run"
    run(sft_config(out, "max_steps=2", "train.report_to=[wandb]"))
    finish_wandb()
    run_id = json.loads((out / IDS_FILE).read_text())["wandb"]["id"]
    [first] = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    records = wandb_records(first / f"run-{run_id}.wandb")
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds.count("run") == 1, kinds
    [started] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (started.run_id, started.display_name, started.project) == (run_id, "run", "tunekit")
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    expected = [{"_step": r["step"], **scalars(r)} for r in read_metrics(out / "metrics.jsonl")]
    assert [{k: h[k] for k in e} for h, e in zip(history, expected, strict=True)] == expected
    config = {item.key: json.loads(item.value_json) for r in records if r.config.update for item in r.config.update}
    assert config["train.lr"] == 1e-3 and config["max_steps"] == 2 and config["train.report_to"] == '["wandb"]'

    # resume=auto from the step-2 checkpoint, on to step 3: the same W&B run id, in a new offline folder.
    run(sft_config(out, "max_steps=3", "train.report_to=[wandb]", "resume=auto"))
    assert json.loads((out / IDS_FILE).read_text())["wandb"]["id"] == run_id
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


def test_grpo_samples_go_to_each_tracker_that_has_tables(tmp_path, monkeypatch, offline_wandb):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "grpo"
    overrides = [
        f"output_dir={out}",
        "model.path=tiny-llama",
        "train.progress=false",
        "data.synthetic_size=8",
        "data.max_eval_examples=2",
        "train.micro_batch_size=2",
        "sampling.num_generations=2",
        "sampling.max_new_tokens=4",
        "sample_every=1",
        "max_steps=2",
        "train.report_to=[mlflow,tensorboard,wandb]",
    ]
    run_grpo(load_config(GRPOConfig, None, overrides))
    finish_wandb()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 0, 0, 0, 1, 1, 1, 1]
    ids = json.loads((out / IDS_FILE).read_text())

    # MLflow: one table artifact, each step's rows appended, equal to samples.jsonl.
    client = MlflowClient(store)
    run_id = ids["mlflow"]["run_id"]
    table = client.load_table(client.get_run(run_id).info.experiment_id, "samples.json", run_ids=[run_id])
    assert table[["step", "prompt", "completion", "reward"]].to_dict("records") == samples

    # TensorBoard: a markdown table in the Text tab at each sampled step, a row per sample.
    events = EventAccumulator(str(out / "trackers" / "tunekit"))
    events.Reload()
    texts = events.Tensors("samples/text_summary")
    assert [t.step for t in texts] == [0, 1]
    first = texts[0].tensor_proto.string_val[0].decode()
    assert first.splitlines()[0] == "| step | prompt | completion | reward |" and len(first.splitlines()) == 2 + 4

    # W&B: a wandb.Table at each sampled step: the history names its file, which holds the step's rows.
    run_id = ids["wandb"]["id"]
    [folder] = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    tables = {}
    for r in wandb_records(folder / f"run-{run_id}.wandb"):
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        if items.get("samples/_type") == "table-file":
            tables[items["_step"]] = json.loads((folder / "files" / items["samples/path"]).read_text())
    assert sorted(tables) == [0, 1]
    for step, table in tables.items():
        assert table["columns"] == ["step", "prompt", "completion", "reward"]
        assert [dict(zip(table["columns"], row, strict=True)) for row in table["data"]] == [
            s for s in samples if s["step"] == step
        ]


def test_an_unknown_tracker_is_refused_with_the_known_names():
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, None, ["train.report_to=[tensorbord]"])
    message = str(err.value)
    assert message.startswith("train.report_to names 'tensorbord', which is not a tracker accelerate knows")
    assert "tensorboard, trackio, wandb" in message and "did you mean 'tensorboard'?" in message


def main_exit(argv: list[str], capsys) -> tuple[int | None, str]:
    """Run the SFT recipe as its command does: the exit code and the last line it printed on stderr."""
    try:
        exit_on_user_error(lambda: sft.main(argv))
        code: int | None = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def test_a_tracker_whose_package_is_missing_stops_the_run_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trackers_module, "tracker_available", lambda name: name != "tensorboard")
    out = tmp_path / "run"
    code, message = main_exit(
        [f"output_dir={out}", *BASE, "max_steps=2", "train.report_to=[mlflow,tensorboard]"], capsys
    )
    assert code == USER_ERROR_EXIT_CODE
    assert message == (
        "tunekit error: train.report_to names tensorboard, whose package is not installed; install it with: "
        'pip install "tunekit[tensorboard]"'
    )
    assert not out.exists()


def test_a_tracker_that_cannot_start_leaves_a_fresh_output_dir_as_it_was(tmp_path, monkeypatch, capsys):
    import mlflow
    from mlflow.exceptions import MlflowException

    def unreachable(*args, **kwargs):
        raise MlflowException("API request to http://mlflow.invalid failed")

    monkeypatch.setattr(mlflow, "search_experiments", unreachable)
    out = tmp_path / "run"
    # TensorBoard starts first and writes its event files; MLflow's failure removes them with the folder.
    argv = [f"output_dir={out}", *BASE, "max_steps=2", "train.report_to=[tensorboard,mlflow]"]
    code, message = main_exit(argv, capsys)
    assert code == USER_ERROR_EXIT_CODE
    assert message.startswith(
        "tunekit error: train.report_to: mlflow could not start a run (MlflowException: API request to "
        "http://mlflow.invalid failed); set MLFLOW_TRACKING_URI"
    )
    assert not out.exists()


def test_flat_config_gives_every_key_a_value_trackers_store():
    flat = flat_config({"seed": 0, "train": {"lr": 1e-3, "report_to": ["wandb"]}, "rewards": [], "kw": {}, "x": None})
    assert flat == {"seed": 0, "train.lr": 1e-3, "train.report_to": '["wandb"]', "rewards": "[]", "kw": "{}", "x": None}
    assert scalars({"step": 3, "loss": 1.5, "loss_spike": True, "spike_example_ids": [1, 2], "n": 2}) == {
        "loss": 1.5,
        "loss_spike": 1,
        "n": 2,
    }
