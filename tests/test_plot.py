"""tunekit.plot on hand-written metrics.jsonl files per recipe family: which charts, valid PNGs, overlays, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tunekit.errors import DataError
from tunekit.plot import collect, load_run, main, place, run_labels, write_charts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMON_CHARTS = {"loss", "lr", "grad_norm", "throughput"}


def common(step: int) -> dict[str, Any]:
    """What the runner logs on every optimizer step, whatever the recipe."""
    return {"step": step, "epoch": step / 8, "loss": 1.0 / step, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 900.0}


def sft_like(step: int) -> dict[str, Any]:
    return {}


def reward_like(step: int) -> dict[str, Any]:
    return {"accuracy": 0.5 + step / 20, "margin": step / 10, "reward_chosen": 0.1 * step, "reward_rejected": -0.1}


def dpo_like(step: int) -> dict[str, Any]:
    return {
        "rewards/chosen": 0.02 * step,
        "rewards/rejected": -0.02 * step,
        "rewards/margin": 0.04 * step,
        "rewards/accuracy": 0.6,
        "logps/chosen": -300.0 + step,
        "logps/rejected": -350.0 - step,
    }


def grpo_like(step: int) -> dict[str, Any]:
    return {
        "reward": 0.3 + step / 20,
        "reward_std": 0.4,
        "rewards/math_correct": 0.3 + step / 20,
        "rewards/math_correct_std": 0.45,
        "rewards/format": 1.0,
        "kl": 0.001 * step,
        "clip_fraction": 0.0,
        "entropy": 0.6,
        "completion_length": 9.5,
        # The runner's flags: a bool and a list, which are not curves.
        "loss_spike": step == 3,
        "spike_example_ids": [4, 7],
    }


EVALS: dict[str, dict[str, float]] = {
    "sft": {"eval/loss": 1.2},
    "reward": {
        "eval/loss": 0.69,
        "eval/accuracy": 0.6,
        "eval/margin": 0.1,
        "eval/reward_mean": 0.0,
        "eval/reward_std": 1,
    },
    "dpo": {"eval/loss": 0.69, "eval/rewards/margin": 0.1, "eval/rewards/accuracy": 0.5, "eval/logps/chosen": -300.0},
    "grpo": {
        "eval/reward": 0.4,
        "eval/rewards/math_correct": 0.4,
        "eval/greedy/reward": 0.7,
        "eval/task/math_correct": 0.4,
        "eval/greedy/task/math_correct": 0.7,
    },
}
FAMILIES = {"sft": sft_like, "reward": reward_like, "dpo": dpo_like, "grpo": grpo_like}
FAMILY_CHART = {"sft": set(), "reward": {"reward_model"}, "dpo": {"dpo"}, "grpo": {"rl"}}


def make_run(root: Path, name: str, family: str, steps: int = 8) -> Path:
    """A run directory whose metrics.jsonl looks like the runner's: a step-0 evaluation line with no training keys,
    training lines, an evaluation merged into the last one, and a loss logged as the string "nan"."""
    run = root / name
    run.mkdir(parents=True)
    lines = [{"step": 0, "epoch": 0.0, **EVALS[family]}]
    for step in range(1, steps + 1):
        lines.append({**common(step), **FAMILIES[family](step)})
    lines[2]["loss"] = "nan"  # how MetricsLog writes a non-finite float
    lines[-1].update({k: v * 1.1 for k, v in EVALS[family].items()})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"
    with Image.open(path) as image:
        image.verify()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_gets_its_charts_as_valid_pngs(tmp_path: Path, family: str) -> None:
    run = make_run(tmp_path, f"{family}-run", family)
    written = write_charts([run], tmp_path / "out")
    assert {p.stem for p in written} == COMMON_CHARTS | FAMILY_CHART[family]
    assert all(p.parent == tmp_path / "out" for p in written)
    for path in written:
        assert_png(path)


def test_rules_route_shared_names_to_the_right_family() -> None:
    # Names two recipes share are told apart by rule order and split, not by knowing the recipe.
    assert place("eval/reward_std")[1:] == ("reward_model", "held-out score mean and std")
    assert place("reward_std")[1] == "rl"
    assert place("eval/rewards/margin")[1:] == ("dpo", "implicit reward margin")
    assert place("rewards/format")[1:] == ("rl", "reward: format")
    assert place("eval/greedy/reward")[1:] == ("rl", "reward (weighted total)")
    assert place("eval/greedy/task/math_correct")[1:] == ("rl", "task metric: math_correct (held out)")
    assert place("eval/loss")[1] == place("loss")[1] == "loss"
    assert place("some_new_metric")[1:] == ("other", "some_new_metric")


def test_train_eval_and_nonfinite_values_share_a_panel(tmp_path: Path) -> None:
    charts = collect({"g": load_run(make_run(tmp_path, "g", "grpo"))})
    loss = charts["loss"]["loss"]
    assert [(c.name, c.split) for c in loss] == [("loss", "train")]  # grpo logs no eval/loss
    assert loss[0].nonfinite == 1 and len(loss[0].steps) == 8
    reward = charts["rl"]["reward (weighted total)"]
    assert [c.split for c in reward] == ["train", "eval", "eval, greedy"]
    assert reward[1].steps == [0, 8]  # the step-0 eval-only line is on the curve
    assert set(charts["rl"]) >= {"reward: math_correct", "reward: format", "KL to the reference policy"}
    assert "other" not in charts  # the loss_spike flag and the id list are not drawn


def test_two_runs_overlay_on_one_file_per_chart(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "beta-0.1", "dpo"), make_run(tmp_path, "beta-0.5", "dpo", steps=5)]
    written = write_charts(runs, tmp_path / "cmp")
    assert sorted(p.name for p in written) == sorted(f"{c}.png" for c in COMMON_CHARTS | {"dpo"})
    for path in written:
        assert_png(path)
    panel = collect({r.name: load_run(r) for r in runs})["dpo"]["implicit reward margin"]
    assert {c.run for c in panel} == {"beta-0.1", "beta-0.5"}


def test_a_dollar_sign_in_a_run_name_is_drawn_as_text(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "lr $1e-4^$", "dpo"), make_run(tmp_path, "lr $1e-5^$", "dpo")]  # broken math
    for path in write_charts(runs, tmp_path / "cmp"):
        assert_png(path)


def test_runs_with_the_same_directory_name_are_told_apart(tmp_path: Path) -> None:
    assert run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == ["a/run", "b/run", "c"]


def test_cli_default_out_dirs_and_printed_paths(tmp_path: Path, monkeypatch, capsys) -> None:
    one = make_run(tmp_path, "one", "sft")
    written = main([str(one)])
    assert {p.parent for p in written} == {one / "plots"}
    assert capsys.readouterr().out.split() == [str(p) for p in written]

    monkeypatch.chdir(tmp_path)
    two = make_run(tmp_path, "two", "sft", steps=3)
    written = main([str(one), str(two)])
    assert {p.resolve().parent for p in written} == {tmp_path / "plots-compare"}
    for path in written:
        assert_png(path)


TORN_INSIDE = '{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n'  # a cut line that is not the last one


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "metrics.jsonl does not exist"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), "is empty"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("\n  \n")), "is empty"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text(TORN_INSIDE)), "line 2 is not JSON"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_bytes(b"\xff\xfe{")), "not UTF-8"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"epoch": 1}\n')), "numeric 'step'"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 1, "note": "hi"}\n')), "no numeric metrics"),
    ],
    ids=["no-dir", "no-file", "empty", "blank-lines", "bad-json", "binary", "no-step", "nothing-numeric"],
)
def test_bad_run_directories_are_user_errors(tmp_path: Path, capsys, setup, message: str) -> None:
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(DataError, match=message):
        write_charts([run], tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "tunekit error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written for a run that cannot be read
