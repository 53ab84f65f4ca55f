"""Kill a tiny training run with SIGKILL at random moments, resume it, and compare with an uninterrupted run.

    python tests/train/kill_trials.py [--trials 20] [--seed 0] [--root DIR] [--damage]

Children are started from a fork server that has already imported torch and tunekit, so each trial costs a
couple of seconds rather than an interpreter start-up. With a checkpoint after every step, many kills land while
a checkpoint is being written; the script counts those (a leftover ``.tmp-step-*`` directory) and reports them.

With ``--damage``, every other trial is killed after its first checkpoint is complete and then has its newest
checkpoint damaged (a truncated weights file, a garbage state.json, a truncated optimizer state, in turn), as a
failing disk would: the resumed run must pass over it to the one before and still end with the uninterrupted run's
adapter.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ARGS = [
    "data.synthetic_size=48",
    "data.eval_fraction=0",
    "train.micro_batch_size=4",
    "train.lr=1e-2",
    "train.save_every=1",
    "train.progress=false",
    "max_steps=10",
    "model.adapter.dropout=0.1",
]


def _train(output_dir: str, extra: list[str]) -> None:
    from tunekit.config import load_config
    from tunekit.recipes.sft import SFTConfig, run

    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the child's chatter is not wanted in the report
    run(load_config(SFTConfig, None, [f"output_dir={output_dir}", *ARGS, *extra]))


def _final(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "final" / "adapter_model.safetensors"))


def _damage(checkpoint: Path, kind: int) -> str:
    """Damage one file of ``checkpoint`` in the ``kind``-th way (cycling); returns what was done."""
    name, how = [("trainable.safetensors", "truncate"), ("state.json", "garbage"), ("optimizer.pt", "truncate")][
        kind % 3
    ]
    path = checkpoint / name
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text("{not json")
    return f"{how} {name}"


def kill_trials(root: Path, trials: int, seed: int, damage: bool = False) -> dict:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "peft", "tunekit.recipes.sft"])
    rng = random.Random(seed)

    # The first child also pays for starting the fork server; the second one times a run as the trials see it.
    for name in ("warm-up", "reference"):
        start = time.perf_counter()
        reference = ctx.Process(target=_train, args=(str(root / name), []))
        reference.start()
        reference.join()
        if reference.exitcode != 0:
            raise RuntimeError(f"the uninterrupted run failed (exit code {reference.exitcode})")
        duration = time.perf_counter() - start
    expected = _final(root / "reference")

    report = {
        "trials": trials,
        "killed_during_checkpoint_write": 0,
        "resumed_from_step": [],
        "max_abs_diff": 0.0,
        "finished_before_the_kill": 0,
        "damaged_newest_checkpoint": [],
    }
    trial = 0
    while trial < trials:
        out = root / f"trial-{trial}"
        child = ctx.Process(target=_train, args=(str(out), []))
        child.start()
        damaging = damage and trial % 2 == 1
        if damaging:
            # A damage trial needs a checkpoint to damage: kill at a random moment after the first one is complete
            # (on a loaded machine most random moments of the whole run fall before it).
            deadline = time.perf_counter() + 10 * duration
            while not (out / "checkpoints" / "step-1" / "COMPLETE").exists() and time.perf_counter() < deadline:
                time.sleep(0.01)
        time.sleep(rng.uniform(0.05, duration / 2 if damaging else duration))
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.join()
        if child.exitcode == 0:  # it finished first: not a trial; try again with another moment
            report["finished_before_the_kill"] += 1
            shutil.rmtree(out)
            if report["finished_before_the_kill"] > 3 * trials:
                raise RuntimeError("the runs finish before the kills; the timing is off")
            continue
        checkpoints = out / "checkpoints"
        if checkpoints.is_dir() and any(p.name.startswith(".tmp-step-") for p in checkpoints.iterdir()):
            report["killed_during_checkpoint_write"] += 1
        complete = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*")) if checkpoints.is_dir() else []
        if damaging and complete:
            done = _damage(checkpoints / f"step-{complete[-1]}", len(report["damaged_newest_checkpoint"]))
            report["damaged_newest_checkpoint"].append(f"step-{complete[-1]}: {done}")
            complete = complete[:-1]
        report["resumed_from_step"].append(complete[-1] if complete else 0)
        resume = ctx.Process(target=_train, args=(str(out), ["resume=auto"]))
        resume.start()
        resume.join()
        if resume.exitcode != 0:
            raise RuntimeError(f"trial {trial}: the resumed run failed (exit code {resume.exitcode})")
        got = _final(out)
        diff = max(float((got[k] - expected[k]).abs().max()) for k in expected)
        report["max_abs_diff"] = max(report["max_abs_diff"], diff)
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        if steps != sorted(set(steps)):
            raise RuntimeError(f"trial {trial}: metrics.jsonl repeats or reorders steps: {steps}")
        trial += 1
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--damage", action="store_true", help="damage the newest checkpoint every other time")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="tunekit-kill-"))
    print(json.dumps(kill_trials(root, args.trials, args.seed, args.damage)))


if __name__ == "__main__":
    main()
