"""What a model card reads: Hub ids, a base model's own card, the saved folder, the run's held-out metrics.

Nothing here goes online. A base model's card is read from its local folder, or from the local Hub cache when a
README.md happens to be there already; anything missing is simply left out of the card.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunekit.models.load import resolve_model_path
from tunekit.models.tiny import TINY_MODELS

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
# owner/name or a bare name, as the Hub spells repository ids.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# A model folder inside the Hub cache: .../models--<owner>--<name>/snapshots/<commit>.
HUB_CACHE_DIR = re.compile(r"models--([\w.-]+?)--([\w.-]+)")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".txt")

# Which value of a held-out metric is its best, decided from the words of its name (split at "/" and "_").
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ppl", "nll", "kl"})
# Metrics that describe the outputs rather than score them: no value of theirs is "best".
DESCRIPTIVE = frozenset({"std", "mean", "logps", "chosen", "rejected", "length", "entropy"})
BEST_RULE = (
    "Best is the lowest value for losses, perplexity and KL, and the highest for every other metric (accuracy, "
    "margin, reward, task scores); metrics that describe the outputs rather than score them (means and spreads of "
    "scores, log-probabilities, lengths, entropy) have no best."
)


@dataclass
class HeldOut:
    """One held-out metric over a run: its first, final and best logged values, each with its step."""

    key: str
    first: tuple[int, float]
    final: tuple[int, float]
    best: tuple[int, float] | None  # None for a metric with no best (see DESCRIPTIVE)


def best_direction(key: str) -> str | None:
    """``"min"``, ``"max"`` or None (no best) for metric ``key``, by :data:`BEST_RULE`."""
    words = set(re.split(r"[/_]", key.removeprefix("eval/").removeprefix("greedy/")))
    if words & LOWER_IS_BETTER:
        return "min"
    return None if words & DESCRIPTIVE else "max"


def held_out_metrics(history: list[dict[str, Any]]) -> list[HeldOut]:
    """Every ``eval/`` key of ``history`` (metrics.jsonl's records), in the order first logged."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for key, value in record.items():
            if key.startswith("eval/") and isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(key, []).append((int(record["step"]), float(value)))
    out = []
    for key, points in series.items():
        direction = best_direction(key)
        finite = [p for p in points if math.isfinite(p[1])]
        best = None
        if direction == "min" and finite:
            best = min(finite, key=lambda p: (p[1], p[0]))  # the earliest step wins a tie: it got there first
        elif direction == "max" and finite:
            best = max(finite, key=lambda p: (p[1], -p[0]))
        out.append(HeldOut(key, points[0], points[-1], best))
    return out


def is_hub_dataset(path: str) -> bool:
    """Whether ``data.path`` names a Hub dataset: not "synthetic", not a local file or folder, shaped like an id."""
    if path == "synthetic" or path.startswith((".", "/", "~")) or Path(path).expanduser().exists():
        return False
    return Path(path).suffix.lower() not in DATA_SUFFIXES and HUB_ID.fullmatch(path) is not None


def hub_model_id(path: str) -> str | None:
    """The Hub id ``path`` stands for: the path itself when it is one, the repository of a Hub-cache folder, or
    None (a local folder, an embedded model)."""
    if path in TINY_MODELS:
        return None
    match = HUB_CACHE_DIR.search(path)
    if match and Path(path).exists():
        return f"{match.group(1)}/{match.group(2)}"
    if path.startswith((".", "/", "~")) or Path(path).expanduser().exists():
        return None
    return path if HUB_ID.fullmatch(path) else None


def base_metadata(path: str, revision: str | None = None) -> dict[str, Any]:
    """The front matter of the base model's README.md: from its local folder, or from the local Hub cache for a
    Hub id (only if a README was downloaded there before; nothing is fetched). {} when there is none."""
    local = Path(resolve_model_path(path)).expanduser()
    if local.is_dir():
        return read_front_matter(local / CARD_NAME)
    repo = hub_model_id(path)
    if repo is None:
        return {}
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, CARD_NAME, revision=revision)
    except Exception:  # a malformed id or an unreadable cache: no licence to report, nothing else goes wrong
        return {}
    return read_front_matter(Path(cached)) if isinstance(cached, str) else {}


def read_front_matter(path: Path) -> dict[str, Any]:
    """The YAML between a Markdown file's opening ``---`` lines, or {} (no file, no front matter, bad YAML)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        loaded = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def saved_parameters(directory: Path) -> int:
    """Parameters in the folder's safetensors files, read from their headers (no tensor is loaded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                count = 1
                for size in f.get_slice(name).get_shape():
                    count *= size
                total += count
    return total


def copy_charts(source: Path, directory: Path) -> list[str]:
    """Copy ``source/*.png`` into ``directory``; the names copied. A chart that cannot be copied is left out."""
    copied = []
    for chart in sorted(source.glob("*.png")) if source.is_dir() else []:
        try:
            shutil.copyfile(chart, directory / chart.name)
            copied.append(chart.name)
        except OSError as err:
            log.warning("chart %s left out of the model card: %s", chart, err)
    return copied


def adapter_config(directory: Path) -> dict[str, Any] | None:
    """The folder's adapter_config.json, or None for full weights."""
    path = directory / "adapter_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def model_head(directory: Path, adapter: dict[str, Any] | None) -> str:
    """``"score"`` for a reward model's folder (a sequence-classification adapter or model), else ``"causal-lm"``."""
    if adapter is not None:
        return "score" if adapter.get("task_type") == "SEQ_CLS" else "causal-lm"
    config = directory / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    return "score" if any(a.endswith("ForSequenceClassification") for a in architectures) else "causal-lm"


def root_base(base: str) -> str:
    """The model at the bottom of a chain of adapter folders, each recording the next as its base."""
    seen = set()
    while (Path(base) / "adapter_config.json").is_file() and base not in seen:
        seen.add(base)
        recorded = json.loads((Path(base) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not recorded:
            break
        base = recorded
    return base


def hub_ids(value: Any) -> str | list[str] | None:
    """``value`` (a front matter's base_model) when every entry is a Hub id, else None."""
    entries = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    if entries and all(isinstance(e, str) and hub_model_id(e) == e for e in entries):
        return value
    return None


def licence(base: dict[str, Any]) -> dict[str, Any]:
    """The licence keys of a base model's front matter. ``license: other`` needs its name and link beside it."""
    return {k: base[k] for k in ("license", "license_name", "license_link") if base.get(k)}


def card_sections(card: Path) -> dict[str, str]:
    """A card's ``## `` sections by title, their text with sub-headings demoted one level."""
    text = card.read_text()
    if text.startswith("---"):
        text = text[text.find("\n---", 3) + 4 :]
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    fence = False
    for line in text.splitlines():
        fence ^= line.startswith("```")
        if line.startswith("## ") and not fence:
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append("#" + line if line.startswith("### ") and not fence else line)
    return {title: "\n".join(lines).strip() for title, lines in sections.items()}
