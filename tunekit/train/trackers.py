"""Experiment trackers (TensorBoard, W&B, MLflow, trackio, ...) through accelerate's tracker API.

``train.report_to`` names them; the runner hands them what it writes to ``metrics.jsonl``, with the same steps,
and the resolved config as the run's hyperparameters. GRPO's and PPO's sample logs send their prompts,
completions and scores as a table where the tracker has one. Only the main process talks to a tracker
(accelerate's ``init_trackers`` and ``log`` run there alone; the tables here check it too).

What tunekit adds to accelerate's trackers:

* the names are checked when the config is read: an unknown name, or one whose package is missing, is a
  :class:`~tunekit.errors.ConfigError` that gives the install command;
* a tracker that cannot start (no login, a store it cannot reach) stops a fresh run before anything of it stays
  in ``output_dir``;
* ``<output_dir>/trackers.json`` keeps the W&B run id, the MLflow run id and the trackio run name, so that a
  resumed run (``resume=auto``) continues the same tracker run, and TensorBoard is told to purge the steps the
  resumed run writes again;
* files the trackers keep locally (TensorBoard's events, W&B's run folder unless ``WANDB_DIR`` says otherwise)
  go under ``<output_dir>/trackers/``.

docs/trackers.md says what each tracker receives and how each treats a step logged twice.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from tunekit.errors import ConfigError, require

# In the run directory: the ids that let a resumed run continue its tracker runs.
IDS_FILE = "trackers.json"
# In the run directory: what the trackers keep on local disk (accelerate's logging_dir).
LOCAL_DIR = "trackers"
# The table name GRPO's and PPO's samples go under.
SAMPLES_TABLE = "samples"
# MLflow has no table type of its own for runs; its log_table writes (and appends to) this JSON artifact.
MLFLOW_SAMPLES_ARTIFACT = "samples.json"

# Status a tracker that keeps one is left in when the run ends with an exception: preempted (exit 143, see
# tunekit/train/signals.py) reads as killed, any other failure as failed.
_KILLED_EXIT_CODES = (130, 143)

# What to try when a tracker cannot start, by the package its error comes from.
_START_HINTS = {
    "mlflow": (
        "set MLFLOW_TRACKING_URI to a tracking server (http://...) or, with MLFLOW_ALLOW_FILE_STORE=true, to a "
        "local folder (file:/path/mlruns); MLflow's sqlite default needs the full mlflow package (pip install mlflow)"
    ),
    "wandb": "log in with `wandb login`, or set WANDB_MODE=offline to write the run locally and sync it later",
}


def known_trackers() -> list[str]:
    """Every tracker name accelerate's ``log_with`` takes (its built-in trackers and any registered since)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def tracker_available(name: str) -> bool:
    """Whether ``name``'s package is installed, asked the way accelerate asks it (``is_<name>_available``)."""
    from accelerate.utils import imports

    check = getattr(imports, f"is_{name}_available", None)
    return True if check is None else bool(check())


def install_command(names: list[str]) -> str:
    """The pip command that installs the trackers ``names`` through tunekit's extras (pyproject.toml), whose names
    are the trackers' with "-" for "_" (comet_ml -> comet-ml), as packaging normalises them."""
    return f'pip install "tunekit[{",".join(name.replace("_", "-") for name in names)}]"'


def resolve_report_to(value: str | list[str]) -> list[str]:
    """``train.report_to`` as a list of tracker names, checked.

    A single name may be written without brackets (``train.report_to=wandb``); ``none`` (the Hugging Face
    Trainer's spelling) means no tracker. Raises :class:`~tunekit.errors.InvalidValue` for ``report_to`` naming an
    unknown tracker (with the known ones) or one whose package is missing (with the install command).
    """
    names = [value] if isinstance(value, str) else list(value)
    names = [] if names == ["none"] else list(dict.fromkeys(names))
    if not names:
        return names
    known = known_trackers()
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        require(
            name in known,
            "report_to",
            f"names {name!r}, which is not a tracker accelerate knows (known: {', '.join(known)}, or none){hint}",
        )
    missing = [name for name in names if not tracker_available(name)]
    require(
        not missing,
        "report_to",
        f"names {', '.join(missing)}, whose package is not installed; install it with: {install_command(missing)}",
    )
    return names


def accelerator_options(report_to: list[str], output_dir: Path) -> dict[str, Any]:
    """The ``Accelerator`` arguments that set up ``report_to``'s trackers (none when it is empty)."""
    if not report_to:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {
        "log_with": list(report_to),
        "project_config": ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / LOCAL_DIR)),
    }


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str | None]:
    """The nested config as ``{"train.lr": 0.001, ...}``: the keys the command line takes, and values every
    tracker stores as a hyperparameter (TensorBoard and MLflow take no lists or mappings, so those are JSON text)."""
    flat: dict[str, bool | int | float | str | None] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, name + "."))
        elif isinstance(value, dict | list | tuple):
            flat[name] = json.dumps(value, default=str)
        elif value is None or isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def scalars(record: dict[str, Any]) -> dict[str, int | float]:
    """The numbers of a metrics.jsonl record, without its step: what a tracker plots. Flags (``loss_spike``,
    ``skipped_pass``) go as 0/1; lists (``spike_example_ids``) stay in metrics.jsonl only."""
    out: dict[str, int | float] = {}
    for key, value in record.items():
        if key == "step":
            continue
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, int | float):
            out[key] = value
    return out


class RunTrackers:
    """A run's trackers, started by :func:`start_trackers`; on processes other than the main one, and when
    ``train.report_to`` is empty, every method does nothing."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    @property
    def started(self) -> list[Any]:
        """accelerate's tracker objects (empty on other processes: accelerate starts them on the main one)."""
        return list(self.accelerator.trackers)

    def log(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl record, at its own step."""
        if self.started:
            self.accelerator.log(scalars(record), step=int(record["step"]))

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        """``rows`` (dicts with the same keys) as a table at ``step``: a W&B or ClearML table, an MLflow table
        artifact (rows appended, a ``step`` column telling them apart), a markdown table in TensorBoard's text tab.
        The other trackers have no table to take it."""
        if not rows or not self.accelerator.is_main_process:
            return
        columns = list(rows[0])
        for tracker in self.started:
            if tracker.name == "mlflow":
                import mlflow

                mlflow.log_table({c: [row.get(c) for row in rows] for c in columns}, artifact_file=f"{name}.json")
            elif tracker.name == "tensorboard":
                tracker.log({name: _markdown_table(columns, rows)}, step=step)
            elif hasattr(tracker, "log_table"):
                tracker.log_table(
                    name, columns=columns, data=[[row.get(c) for c in columns] for row in rows], step=step
                )

    def finish(self, error: BaseException | None = None) -> None:
        """End every tracker run; after an ``error``, W&B and MLflow record it as failed (or killed, for a
        preempted or interrupted run). A tracker that fails to close is reported, never raised over ``error``."""
        global _active
        if _active is self:
            _active = None
        code = _exit_code(error)
        for tracker in self.started:
            if getattr(tracker, "tracker", None) is None:
                continue  # never started: a tracker before it failed to
            try:
                if code and tracker.name == "mlflow":
                    import mlflow

                    mlflow.end_run(status="KILLED" if code in _KILLED_EXIT_CODES else "FAILED")
                elif code and tracker.name == "wandb":
                    tracker.run.finish(exit_code=code)
                else:
                    tracker.finish()
            except Exception as err:  # closing one tracker must not hide the run's own outcome
                _say(f"warning: the {tracker.name} tracker did not close cleanly: {type(err).__name__}: {err}")
        self.accelerator.trackers = []


# The run whose trackers are open in this process: the sample logs reach it through log_samples, since they are
# made by the recipes before the runner starts and the runner never learns which hooks sample.
_active: RunTrackers | None = None


def start_trackers(
    accelerator: Any, project: str, config: dict[str, Any], output_dir: Path, resume_step: int | None
) -> RunTrackers:
    """Start the trackers the accelerator was made with (:func:`accelerator_options`), on the main process.

    ``config`` is the resolved config (what config.yaml holds); ``resume_step`` the checkpoint's step when the run
    resumes one, else None. Runs named in ``output_dir/trackers.json`` are continued. Call it before anything is
    written to a fresh ``output_dir``: a tracker that cannot start removes what the others wrote there and raises a
    :class:`~tunekit.errors.ConfigError` saying what to try.
    """
    global _active
    trackers = _active = RunTrackers(accelerator)
    if not accelerator.log_with or not accelerator.is_main_process:
        return trackers
    names = [str(name) for name in accelerator.log_with]
    ids_path = output_dir / IDS_FILE
    saved = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    existed = output_dir.exists()
    fresh = not existed or not any(output_dir.iterdir())
    try:
        accelerator.init_trackers(project, init_kwargs=_init_kwargs(names, saved, output_dir, resume_step))
        values = flat_config(config)
        for tracker in accelerator.trackers:
            tracker.store_init_configuration(_new_params(values) if tracker.name == "mlflow" else values)
        _write_ids(ids_path, {**saved, **_run_ids(accelerator)})
    except Exception as err:
        trackers.finish(err)
        if fresh and output_dir.exists():
            _remove_what_was_written(output_dir, keep_folder=existed)
        package = type(err).__module__.split(".")[0]
        hint = f"; {_START_HINTS[package]}" if package in _START_HINTS else ""
        raise ConfigError(
            f"train.report_to: {package if package in names else 'a tracker'} could not start a run "
            f"({type(err).__name__}: {_first_line(err)}){hint}"
        ) from err
    return trackers


def end_trackers(error: BaseException | None = None) -> None:
    """End the trackers of the run open in this process, if any (see :meth:`RunTrackers.finish`)."""
    if _active is not None:
        _active.finish(error)


def log_samples(step: int, rows: list[dict[str, Any]]) -> None:
    """GRPO's and PPO's samples at ``step`` (the lines samples.jsonl gets) as the run's ``samples`` table."""
    if _active is not None:
        _active.log_table(SAMPLES_TABLE, rows, step)


def _init_kwargs(
    names: list[str], saved: dict[str, Any], output_dir: Path, resume_step: int | None
) -> dict[str, dict[str, Any]]:
    """Each tracker's start arguments: the run's name (its folder's), and the saved ids of the runs to continue."""
    run_name = output_dir.resolve().name
    kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in names and saved:
        # Events of this step and later, left in earlier event files by the interrupted run, are dropped by
        # TensorBoard's readers: the resumed run writes them again, as metrics.jsonl does.
        kwargs["tensorboard"] = {"purge_step": resume_step + 1 if resume_step is not None else 0}
    if "wandb" in names:
        run_id = saved.get("wandb", {}).get("id") or uuid.uuid4().hex[:8]
        # W&B's local folder: WANDB_DIR when set, else beside the run's other tracker files. Passed explicitly
        # because W&B reads WANDB_DIR once per process, and a process may run several trainings (tests, notebooks).
        local = Path(os.environ.get("WANDB_DIR") or output_dir / LOCAL_DIR)
        local.mkdir(parents=True, exist_ok=True)
        kwargs["wandb"] = {"name": run_name, "id": run_id, "resume": "allow", "dir": str(local)}
    if "mlflow" in names:
        kwargs["mlflow"] = {"run_name": run_name, "run_id": saved.get("mlflow", {}).get("run_id")}
    if "trackio" in names:
        name = saved.get("trackio", {}).get("name")
        kwargs["trackio"] = {"name": name or run_name, "resume": "allow" if name else "never"}
    return kwargs


def _run_ids(accelerator: Any) -> dict[str, dict[str, str]]:
    """What trackers.json keeps of each started tracker run, to continue it on resume."""
    ids: dict[str, dict[str, str]] = {}
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            ids["wandb"] = {"id": tracker.run.id, "project": tracker.run.project}
        elif tracker.name == "mlflow":
            import mlflow

            ids["mlflow"] = {"run_id": tracker.active_run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()}
        elif tracker.name == "trackio":
            ids["trackio"] = {"name": tracker.run.name}
        elif tracker.name == "tensorboard":
            ids["tensorboard"] = {"dir": os.path.relpath(tracker.logging_dir, accelerator.project_dir)}
    return ids


def _new_params(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` less the params the continued MLflow run already holds: MLflow refuses to change a logged
    param, and a resumed run's config differs at least in ``resume``; the first run's values stay."""
    import mlflow

    run = mlflow.active_run()
    held = mlflow.get_run(run.info.run_id).data.params if run is not None else {}
    return {key: value for key, value in values.items() if key not in held}


def _remove_what_was_written(output_dir: Path, keep_folder: bool) -> None:
    """Empty ``output_dir`` of what the trackers wrote, and remove it too unless it was there (empty) before."""
    if not keep_folder:
        shutil.rmtree(output_dir)
        return
    for child in output_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _write_ids(path: Path, ids: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(ids, indent=2) + "\n")
    os.replace(tmp, path)


def _markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A markdown table TensorBoard's text tab renders; cell text keeps its line breaks as <br>."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = f"{value:.4g}" if math.isfinite(value) else str(value)
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _exit_code(error: BaseException | None) -> int:
    """0 for a run that ended well; the process's exit code for one that stops with ``error``."""
    if error is None:
        return 0
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def _say(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)
