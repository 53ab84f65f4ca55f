"""PNG charts of one or more runs' ``metrics.jsonl``: ``python -m tunekit.plot RUN_DIR [RUN_DIR ...] [--out DIR]``.

Which chart a metric lands on is decided by :data:`RULES`, an ordered table of regular expressions over metric
names, not by the recipe that wrote it: a run gets every chart whose metrics it logged, and a metric no rule names
still gets drawn, on the ``other`` chart. A key is split into a *split* (``train``, ``eval``, ``eval, greedy``,
read from its ``eval/`` or ``eval/greedy/`` prefix) and a *name*; the train and eval values of one name share a
panel, drawn in one colour with different line styles, so a held-out curve sits on top of its training curve.
Several runs are overlaid on the same axes and told apart by their directory names.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib import colormaps, rc_context

# The Agg canvas draws without a display, and building figures on it directly (not through pyplot) leaves the
# process-wide backend and pyplot's figure registry alone: write_charts is meant to run at the end of training too.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tunekit.errors import DataError, exit_on_user_error
from tunekit.train.log import read_metrics

# Keys that are the x axis or bookkeeping, never a curve.
NOT_METRICS = frozenset({"step", "epoch"})

# Key prefix -> split label; longest prefix first, so "eval/greedy/reward" is the greedy split, not "eval".
SPLITS: tuple[tuple[str, str], ...] = (("eval/greedy/", "eval, greedy"), ("eval/", "eval"), ("", "train"))
ALL_SPLITS = tuple(label for _, label in SPLITS)

# How each split is drawn. Evaluations are sparse (every eval_every steps): markers make a single evaluation
# visible, and they sit above the noisy per-step training curve, which is faded.
SPLIT_STYLE: dict[str, dict[str, Any]] = {
    "train": {"linestyle": "-", "linewidth": 1.1, "alpha": 0.7},
    "eval": {"linestyle": "--", "linewidth": 1.6, "marker": "o", "markersize": 4.5, "zorder": 3},
    "eval, greedy": {"linestyle": ":", "linewidth": 1.8, "marker": "s", "markersize": 4.5, "zorder": 3},
}


# Panel cell size and the margins around the axes, in inches. Fixed margins rather than matplotlib's constrained
# layout: that layout measures every text twice and took over half the time of a nine-panel chart.
PANEL_W, PANEL_H = 5.2, 3.7
LEFT, RIGHT, BOTTOM, TOP = 0.95, 0.25, 0.6, 0.85  # room for tick labels + y label; x label; suptitle + title
GAP_W, GAP_H = 1.05, 0.95  # between panels: the next panel's y label; this x label and the next title


@dataclass(frozen=True)
class Rule:
    """Metrics whose name fully matches ``pattern`` (and whose split is in ``splits``) go to ``chart``, in a panel
    titled ``panel``; ``panel`` may use the pattern's named groups, e.g. one panel per ``{source}``."""

    chart: str
    panel: str
    pattern: str
    splits: tuple[str, ...] = ALL_SPLITS


# First match wins, so the specific rules sit above the general ones (DPO's rewards/margin above GRPO's
# rewards/<source>; the reward model's held-out reward_std above GRPO's batch reward_std).
RULES: tuple[Rule, ...] = (
    # Every recipe: the runner's own keys.
    Rule("loss", "loss", r"loss"),
    Rule("lr", "learning rate", r"lr"),
    Rule("grad_norm", "gradient norm (before clipping)", r"grad_norm"),
    Rule("throughput", "tokens per second", r"tokens_per_s"),
    # Reward model (Bradley-Terry on a score head): ranking quality of the scores.
    Rule("reward_model", "pairwise accuracy (chosen > rejected)", r"accuracy"),
    Rule("reward_model", "score margin (chosen - rejected)", r"margin"),
    Rule("reward_model", "scores: chosen vs rejected", r"reward_(chosen|rejected)"),
    Rule("reward_model", "held-out score mean and std", r"reward_(mean|std)", splits=("eval",)),
    # DPO family: the implicit reward beta * log(pi / pi_ref) and the policy log-probs it is built from.
    Rule("dpo", "implicit reward margin", r"rewards/margin"),
    Rule("dpo", "implicit reward accuracy", r"rewards/accuracy"),
    Rule("dpo", "implicit rewards: chosen vs rejected", r"rewards/(chosen|rejected)"),
    Rule("dpo", "policy log-probs: chosen vs rejected", r"logps/.+"),
    # Policy-gradient RL (GRPO, PPO): what is being raised, how far the policy moves, what it generates.
    Rule("rl", "task metric: {checker} (held out)", r"task/(?P<checker>.+)"),
    Rule("rl", "reward (weighted total)", r"reward"),
    Rule("rl", "reward std within the step", r"reward_std|rewards/.+_std"),
    Rule("rl", "reward: {source}", r"rewards/(?P<source>.+)"),
    Rule("rl", "KL to the reference policy", r"kl"),
    Rule("rl", "clip fraction", r"clip_fraction"),
    Rule("rl", "probability ratio (mean)", r"ratio_mean"),
    Rule("rl", "entropy per token", r"entropy"),
    Rule("rl", "completion length (tokens)", r"completion_length"),
    Rule("rl", "truncated completions (fraction)", r"truncated_fraction"),
    Rule("rl", "policy loss", r"policy_loss"),
    Rule("rl", "value loss", r"value_loss"),
    Rule("rl", "value clip fraction", r"value_clip_fraction"),
    Rule("rl", "reward-model score", r"reward_model"),
    Rule("rl", "reward with the KL penalty (PPO)", r"reward_with_kl_penalty"),
    Rule("rl", "KL coefficient (PPO)", r"kl_coef"),
    Rule("rl", "approximate KL(old || new) per minibatch", r"approx_kl"),
    Rule("rl", "critic explained variance", r"explained_variance"),
    # Anything else a recipe logs is still drawn rather than silently dropped.
    Rule("other", "{name}", r"(?P<name>.+)"),
)

CHART_TITLES: dict[str, str] = {
    "loss": "Loss (train and held-out)",
    "lr": "Learning rate",
    "grad_norm": "Gradient norm",
    "throughput": "Throughput",
    "reward_model": "Reward model",
    "dpo": "Preference optimisation (DPO family)",
    "rl": "Policy optimisation (GRPO / PPO)",
    "other": "Other metrics",
}


@dataclass
class Series:
    """One curve: the finite-or-not values of one metric key of one run, against the optimizer step."""

    run: str
    name: str
    split: str
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def nonfinite(self) -> int:
        return sum(not math.isfinite(v) for v in self.values)


# chart -> panel title -> curves, both in drawing order.
Charts = dict[str, dict[str, list[Series]]]


def split_key(key: str) -> tuple[str, str]:
    """``"eval/greedy/reward"`` -> ``("eval, greedy", "reward")``; ``"loss"`` -> ``("train", "loss")``."""
    for prefix, split in SPLITS:
        if key.startswith(prefix) and len(key) > len(prefix):
            return split, key[len(prefix) :]
    return "train", key


def place(key: str) -> tuple[int, str, str]:
    """The (rule index, chart, panel title) a metric key is drawn in; the index orders panels within a chart."""
    split, name = split_key(key)
    for index, rule in enumerate(RULES):
        match = re.fullmatch(rule.pattern, name)
        if match and split in rule.splits:
            return index, rule.chart, rule.panel.format(**match.groupdict())
    raise AssertionError(f"the catch-all rule matches every key, including {key!r}")


def number(value: Any) -> float | None:
    """A plottable float, or None. metrics.jsonl writes non-finite floats as the strings "nan", "inf", "-inf"."""
    if isinstance(value, bool):  # flags such as loss_spike are bools, which are ints to Python
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return None


def load_run(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``; a :class:`DataError` when there is nothing readable to plot."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist (or is not a directory)")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist; is {run_dir} a tunekit run directory?")
    try:
        records = read_metrics(path)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; metrics.jsonl holds one JSON object per line") from None
    except ValueError as err:  # json.JSONDecodeError; name the line, read_metrics parses line by line
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        bad = next(i for i, line in enumerate(lines, 1) if not _is_json(line))
        raise DataError(f"{path}: non-empty line {bad} is not JSON ({err})") from None
    if not records:
        raise DataError(f"{path} is empty; the run logged no steps yet")
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict) or number(record.get("step")) is None:
            raise DataError(f"{path}: non-empty line {i} is not a JSON object with a numeric 'step'")
    return records


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def collect(runs: dict[str, list[dict[str, Any]]]) -> Charts:
    """Group every metric of every run into charts and panels by :data:`RULES`."""
    curves: dict[tuple[str, str], Series] = {}  # (run, key) -> its curve
    order: dict[tuple[str, str], tuple[int, str, str]] = {}
    for run, records in runs.items():
        for record in records:
            step = number(record["step"])
            for key, raw in record.items():
                value = number(raw)
                if key in NOT_METRICS or value is None:
                    continue
                if (run, key) not in curves:
                    split, name = split_key(key)
                    curves[run, key] = Series(run, name, split)
                    order[run, key] = place(key)
                curves[run, key].steps.append(step)
                curves[run, key].values.append(value)
    charts: Charts = {chart: {} for chart in CHART_TITLES}
    run_rank = {run: i for i, run in enumerate(runs)}
    split_rank = {split: i for i, split in enumerate(SPLIT_STYLE)}

    def drawing_order(run_key: tuple[str, str]) -> tuple:
        # Panels in rule order (then by title, for per-source panels); curves by run, then metric name, then
        # split, so the sparse eval markers are drawn over the dense training curve and listed after it.
        curve = curves[run_key]
        return order[run_key][0], order[run_key][2], run_rank[curve.run], curve.name, split_rank[curve.split]

    for run, key in sorted(curves, key=drawing_order):
        _, chart, panel = order[run, key]
        charts.setdefault(chart, {}).setdefault(panel, []).append(curves[run, key])
    return {chart: panels for chart, panels in charts.items() if panels}


def draw(chart: str, panels: dict[str, list[Series]], runs: Sequence[str], path: Path) -> None:
    """One PNG: a grid of panels, every panel overlaying all runs, train and eval."""
    # Run names and metric keys are plain text: a "$" in a run directory's name must not open math mode.
    with rc_context({"text.parse_math": False}):
        _draw(chart, panels, runs, path)


def _draw(chart: str, panels: dict[str, list[Series]], runs: Sequence[str], path: Path) -> None:
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(PANEL_W * ncols, PANEL_H * nrows), dpi=100)
    FigureCanvasAgg(fig)
    # A one-panel chart has no panel title under its suptitle, so it needs less room at the top.
    top = TOP if len(panels) > 1 else TOP - 0.3
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=_margins(nrows, ncols, top)).ravel()
    palette = colormaps["tab10"].colors
    # The grid can have more axes than panels (the unused ones are hidden below).
    for ax, (title, curves) in zip(axes, panels.items(), strict=False):
        names = list(dict.fromkeys(c.name for c in curves))
        # One colour per (run, metric name): a run's train and eval curves of a metric share it, line style
        # tells them apart; a second metric in the panel (e.g. chosen vs rejected) gets its own colour.
        pairs = dict.fromkeys((c.run, c.name) for c in curves)
        colors = {pair: palette[i % len(palette)] for i, pair in enumerate(pairs)}
        for c in curves:
            style = dict(SPLIT_STYLE.get(c.split, SPLIT_STYLE["eval"]))
            if c.split == "train" and len(c.steps) < 30:  # a short run: show each logged step as a point
                style.update(marker=".", markersize=5)
            ys = [v if math.isfinite(v) else math.nan for v in c.values]  # non-finite values leave a gap
            ax.plot(c.steps, ys, color=colors[c.run, c.name], label=_label(c, len(names)), **style)
        if len(panels) > 1:  # a one-panel chart's suptitle already says what it shows
            ax.set_title(title, fontsize=11)
        ax.set_xlabel("optimizer step")
        # Scientific notation outside 1e-2..1e4 keeps tick labels short (a learning rate reads "2.0" under "1e-3"),
        # and no additive offset, so a flat curve reads as its value (9.5), not "+9.5" above the axis.
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 4), useOffset=False)
        ax.set_ylabel(", ".join(names) if len(names) <= 2 else "value")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    shown = ", ".join(runs) if len(runs) <= 4 else f"{', '.join(runs[:3])} and {len(runs) - 3} more"
    fig.suptitle(f"{CHART_TITLES.get(chart, chart)}: {shown}", fontsize=12, y=1 - 0.12 / (PANEL_H * nrows), va="top")
    fig.savefig(path, format="png")


def _margins(nrows: int, ncols: int, top: float) -> dict[str, float]:
    """subplots_adjust fractions for the inch margins above (wspace/hspace are fractions of one axes' size)."""
    width, height = PANEL_W * ncols, PANEL_H * nrows
    axes_w = (width - LEFT - RIGHT - GAP_W * (ncols - 1)) / ncols
    axes_h = (height - BOTTOM - top - GAP_H * (nrows - 1)) / nrows
    return {
        "left": LEFT / width,
        "right": 1 - RIGHT / width,
        "bottom": BOTTOM / height,
        "top": 1 - top / height,
        "wspace": GAP_W / axes_w,
        "hspace": GAP_H / axes_h,
    }


def _label(curve: Series, nnames: int) -> str:
    parts = [curve.run]
    if nnames > 1:
        parts.append(curve.name)
    label = " ".join(parts)
    if curve.split != "train":
        label += f" ({curve.split})"
    if curve.nonfinite:
        label += f" [{curve.nonfinite} non-finite]"
    return label


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, with the parent added where two runs share a name (``a/run`` and ``b/run``)."""
    paths = [Path(d).resolve() for d in run_dirs]
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    # Still equal (the same directory twice, or a/x/run and b/x/run): number them so no curve hides another.
    return [f"{lab} #{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def write_charts(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write ``<out_dir>/<chart>.png`` for every chart the runs' metrics fill; return the paths written.

    Charts: ``loss``, ``lr``, ``grad_norm``, ``throughput`` for every run, then ``reward_model``, ``dpo``, ``rl``
    (GRPO / PPO) and ``other`` where the runs logged such metrics. Raises :class:`DataError` for a missing run
    directory or a missing, empty or malformed ``metrics.jsonl``.
    """
    if not run_dirs:
        raise DataError("no run directories given to plot")
    labels = run_labels(run_dirs)
    runs = {label: load_run(Path(d)) for label, d in zip(labels, run_dirs, strict=True)}
    charts = collect(runs)
    if not charts:
        raise DataError(f"no numeric metrics to plot in {', '.join(str(Path(d) / 'metrics.jsonl') for d in run_dirs)}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the chart directory {out_dir}: {err}") from None
    written = []
    for chart, panels in charts.items():
        path = out_dir / f"{chart}.png"
        draw(chart, panels, labels, path)
        written.append(path)
    return written


def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """``RUN_DIR/plots`` for one run; ``./plots-compare`` for several, which belong to none of them."""
    return Path(run_dirs[0]) / "plots" if len(run_dirs) == 1 else Path("plots-compare")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tunekit.plot",
        description="Write PNG charts of one or more runs' metrics.jsonl; several runs are overlaid.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="a run's output_dir")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the PNGs (default: RUN_DIR/plots, or ./plots-compare)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    """The command line; a mistake in what was given exits with code 2 and one message, not a traceback."""

    def run() -> list[Path]:
        args = parse_args(argv)
        written = write_charts(args.run_dirs, args.out or default_out_dir(args.run_dirs))
        for path in written:
            print(path)
        return written

    return exit_on_user_error(run)


if __name__ == "__main__":
    main()
