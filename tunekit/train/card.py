"""The model card a finished run leaves in ``final/README.md``, and the one an export leaves beside a merged model.

A Hugging Face repository shows its README.md as the model card, so the card opens with the YAML front matter the
Hub reads (``base_model``, ``library_name``, ``tags``, ``datasets``, ``license``, ``pipeline_tag``) and then says
what the folder holds and how it came to be: the method and its settings, the data, the training settings, the
held-out results read from metrics.jsonl, the run's charts (copied beside the card), the command that repeats the
run, and how to load the folder with transformers and peft alone.

Everything is read from what the run already wrote — its config, metrics.jsonl, plots/ and the saved files — and
nothing is fetched: a base model's licence comes from the front matter of its local folder's README.md or of a
README already in the local Hub cache. The recipe supplies only what is its own (:class:`RecipeCard`).

The Hub refuses a README whose ``base_model`` or ``datasets`` is not a Hub id (a local path is a "bad request"), so
both are written only when they are Hub ids; a local base is named in the card's text instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunekit.config import to_dict
from tunekit.data.mixture import DataSource
from tunekit.models.adapters import saved_adapter_method
from tunekit.models.tiny import TINY_MODELS, cache_dir
from tunekit.train.card_facts import (
    BEST_RULE,
    CARD_NAME,
    adapter_config,
    base_metadata,
    card_sections,
    copy_charts,
    held_out_metrics,
    hub_ids,
    hub_model_id,
    is_hub_dataset,
    licence,
    model_head,
    read_front_matter,
    root_base,
    saved_parameters,
)
from tunekit.train.card_text import document, fenced, grid, loading_snippet, scoring_note, table, upload_note
from tunekit.train.log import read_metrics

log = logging.getLogger(__name__)

METHOD_NAMES = {
    "lora": "LoRA",
    "dora": "DoRA",
    "ia3": "IA3",
    "prompt_tuning": "prompt tuning",
    "prefix_tuning": "prefix tuning",
    "llama_adapter": "LLaMA-Adapter",
    "full": "full fine-tuning",
}
# adapter_config.json keys worth a line of the card, in the order shown; a key the method lacks is left out.
ADAPTER_SETTINGS = (
    ("r", "rank (r)"),
    ("lora_alpha", "alpha"),
    ("lora_dropout", "dropout"),
    ("use_rslora", "rsLoRA scaling (alpha / sqrt(r))"),
    ("target_modules", "target modules"),
    ("target_parameters", "target parameters"),
    ("feedforward_modules", "feed-forward modules (input scaled)"),
    ("num_virtual_tokens", "virtual tokens"),
    ("adapter_len", "adaption-prompt tokens"),
    ("adapter_layers", "adapted layers"),
    ("modules_to_save", "trained and saved whole"),
)

# The card's sections that describe the training run, carried into an export's card.
RUN_SECTIONS = ("Method", "Data", "Training", "Held-out results", "Charts")
# Config keys every recipe shares, shown in their own sections; the rest are the recipe's own settings.
SHARED_KEYS = ("output_dir", "seed", "max_steps", "resume", "model", "train", "data")


@dataclass
class RecipeCard:
    """What only the recipe knows about its run, for the card."""

    recipe: str  # the module under tunekit.recipes, e.g. "sft"
    about: str  # what the recipe does; the first line is used, so a module docstring will do
    data: list[str] = field(default_factory=list)  # the data summary lines the recipe printed
    notes: list[str] = field(default_factory=list)  # anything else a user of the result must know


def with_model_card(save: Callable[..., None], card: RecipeCard, config: Any, run_dir: Path) -> Callable[..., None]:
    """``save`` (a RunSpec's ``save_final``) followed by the run's card, written into the same folder: the runner
    renames that folder into place whole, so final/ never appears without its card. Nothing about the card can fail
    the run it describes: a card that cannot be written is a logged warning."""

    def save_with_card(model: Any, directory: Path, **kwargs: Any) -> None:
        save(model, directory, **kwargs)
        try:
            write_run_card(directory, card, config, Path(run_dir), int(os.environ.get("WORLD_SIZE", "1")))
        except Exception as err:  # the file system and odd configs raise many kinds of errors; none may end the run
            log.warning("training finished and final/ is saved, but its model card could not be written: %s", err)

    return save_with_card


# ------------------------------------------------------------------------------------------------- the run's card
def write_run_card(directory: Path, card: RecipeCard, config: Any, run_dir: Path, processes: int = 1) -> Path:
    """Write ``directory/README.md`` for the run in ``run_dir`` whose result ``directory`` holds (final/, or the
    temporary folder it is saved in), copying ``run_dir/plots/*.png`` beside it."""
    values = to_dict(config)
    config_file = run_dir / "config.yaml"
    config_text = config_file.read_text() if config_file.is_file() else yaml.safe_dump(values, sort_keys=False)
    metrics = run_dir / "metrics.jsonl"
    history = read_metrics(metrics) if metrics.is_file() else []
    charts = copy_charts(run_dir / "plots", directory)
    text = render_run_card(card, values, directory, run_dir, history, charts, config_text, processes)
    path = directory / CARD_NAME
    path.write_text(text)
    return path


def render_run_card(
    card: RecipeCard,
    values: dict[str, Any],
    directory: Path,
    run_dir: Path,
    history: list[dict[str, Any]],
    charts: list[str],
    config_text: str,
    processes: int = 1,
) -> str:
    """The card's text, from the config (as plain dicts), the saved folder and the run's history."""
    adapter = adapter_config(directory)
    head = model_head(directory, adapter)
    method = saved_adapter_method(directory) if adapter is not None else "full"
    started = (adapter or {}).get("base_model_name_or_path") or values["model"]["path"]
    final = run_dir / "final"
    metadata = front_matter(card.recipe, values, method, head, started)
    what = f"A {METHOD_NAMES.get(method, method)} adapter" if adapter is not None else "A fully fine-tuned model"
    role = " with a one-output score head (a reward model)" if head == "score" else ""
    about = card.about.strip().splitlines()[0] if card.about.strip() else card.recipe
    parts = [
        f"# {run_dir.name}",
        f"{what}{role}, trained from {_describe_base(started)} by tunekit's `{card.recipe}` recipe. {about}",
        *card.notes,
        "## Method",
        table(_method_rows(method, adapter, values, directory, head)),
        "## Data",
        _data_section(values, card.data),
        "## Training",
        table(_training_rows(values, history, processes)),
    ]
    recipe_own = {k: v for k, v in values.items() if k not in SHARED_KEYS}
    if recipe_own:
        own = yaml.safe_dump(recipe_own, sort_keys=False).rstrip()
        parts += ["The recipe's own settings:", fenced(own, "yaml")]
    parts += ["## Held-out results", held_out_section(history)]
    if charts:
        parts += ["## Charts", "\n".join(f"![{Path(name).stem}]({name})" for name in charts)]
    again = f"{run_dir}-again"
    command = f"python -m tunekit.recipes.{card.recipe} --config {run_dir / 'config.yaml'} output_dir={again}"
    if values.get("resume") is not None:
        command += " resume=null"  # a resumed run reproduces the uninterrupted one
    parts += [
        "## Reproduce",
        "With the same base model and data, in the tunekit checkout the run was made in (the run's config.yaml "
        "holds every setting; `output_dir` names a new folder, since the run's own already holds it):",
        fenced(command, "bash"),
        f"<details><summary>config.yaml</summary>\n\n{fenced(config_text.rstrip(), 'yaml')}\n\n</details>",
        "## Load",
        "With transformers and peft alone (replace the folder by the Hub repository once uploaded):",
        fenced(loading_snippet(str(final), head, adapter, started, values["model"].get("dtype", "fp32")), "python"),
        *scoring_note(head),
        "## Upload",
        upload_note(str(final), local_base=metadata.get("base_model") is None),
    ]
    return document(metadata, parts)


def front_matter(recipe: str, values: dict[str, Any], method: str, head: str, started: str) -> dict[str, Any]:
    """The Hub's metadata for a run of ``recipe`` with config ``values`` that started from ``started``."""
    base = base_metadata(started, values["model"].get("revision"))
    metadata: dict[str, Any] = {}
    base_model = hub_model_id(started) or hub_ids(base.get("base_model"))
    if base_model:
        metadata["base_model"] = base_model
    metadata["library_name"] = "transformers" if method == "full" else "peft"
    metadata["pipeline_tag"] = "text-classification" if head == "score" else "text-generation"
    tags = ["tunekit", recipe, "full-fine-tuning" if method == "full" else method.replace("_", "-")]
    if values["model"].get("quantization") == "4bit" and method in ("lora", "dora"):
        tags.append("qlora")
    metadata["tags"] = tags
    data = values.get("data") or {}
    paths = [data.get("path"), data.get("eval_path")]
    paths += [p for source in data.get("sources") or [] for p in (source.get("path"), source.get("eval_path"))]
    datasets = [p for p in paths if p and is_hub_dataset(p)]
    if datasets:
        metadata["datasets"] = list(dict.fromkeys(datasets))
    metadata.update(licence(base))
    return metadata


def held_out_section(history: list[dict[str, Any]]) -> str:
    """The held-out results as a table: each ``eval/`` metric's first, final and best value, with its step."""
    metrics = held_out_metrics(history)
    if not metrics:
        return "No held-out evaluation ran (no held-out data, or `train.eval_every` and the last step logged none)."
    rows = [("metric", "first", "final", "best")]
    for m in metrics:
        best = "—" if m.best is None else _at(m.best)
        rows.append((f"`{m.key}`", _at(m.first), _at(m.final), best))
    return f"From metrics.jsonl; each value with its step. {BEST_RULE}\n\n{grid(rows)}"


# ------------------------------------------------------------------------------------------------- sections
def _method_rows(
    method: str, adapter: dict[str, Any] | None, values: dict[str, Any], directory: Path, head: str
) -> list[tuple[str, str]]:
    rows = [("method", METHOD_NAMES.get(method, method) + (" + score head" if head == "score" else ""))]
    for key, label in ADAPTER_SETTINGS:
        value = (adapter or {}).get(key)
        if value not in (None, [], {}, ""):
            rows.append((label, _setting(value)))
    trained = saved_parameters(directory)
    what = "every weight of the model" if adapter is None else "the adapter's tensors saved in final/"
    rows.append(("trained parameters", f"{trained:,} ({what})"))
    model = values["model"]
    quantized = model.get("quantization", "none")
    rows.append(("base weights", model.get("dtype", "fp32") + ("" if quantized == "none" else f", stored {quantized}")))
    return rows


def _data_section(values: dict[str, Any], lines: list[str]) -> str:
    data = values.get("data") or {}
    path = data.get("path", "")
    if path == "synthetic":
        source = f"generated by tunekit (`synthetic`, {data.get('synthetic_size')} rows from seed {values['seed']})"
    elif is_hub_dataset(path):
        source = f"[{path}](https://huggingface.co/datasets/{path}) (split `{data.get('split', 'train')}`)"
    else:
        source = f"`{path}`"
    if data.get("sources"):  # a mixture (docs/data-mixtures.md): each source's path and weight, its own held-out rows
        source = "a mixture of " + ", ".join(
            f"`{m.path}` ({m.label()}, weight {m.weight or 'its size'})"
            for m in (DataSource(**fields) for fields in data["sources"])
        )
        held = "each source's own eval_path, or eval_fraction of its rows"
    elif data.get("eval_path"):
        held = f"`{data['eval_path']}`"
    elif path == "synthetic":
        held = f"{data.get('eval_fraction', 0):g} x synthetic_size fresh rows"
    else:
        held = f"{data.get('eval_fraction', 0):g} of the rows, drawn with the seed"
    shown = ("format", "max_length", "max_prompt_length", "packing", "train_on_prompt", "prompt_template")
    # Written as config.yaml writes them (true, null), so they can be pasted back as overrides.
    settings = ", ".join(f"{k} `{_as_yaml(data[k])}`" for k in shown if k in data)
    text = f"Training data: {source}. Held out: {held}."
    if settings:
        text += f" Settings: {settings}."
    if lines:
        text += " What the run read, as it printed it:\n\n" + fenced("\n".join(lines), "text")
    return text


def _training_rows(values: dict[str, Any], history: list[dict[str, Any]], processes: int) -> list[tuple[str, str]]:
    train = values["train"]
    last = history[-1] if history else {}
    steps = f"{last.get('step', 0)}"
    if values.get("max_steps") is not None:
        steps += f" (max_steps {values['max_steps']})"
    per_step = train["micro_batch_size"] * processes * train["grad_accum_steps"]
    warmup = f", warmup {train['warmup_ratio']:g} of the steps" if train.get("warmup_ratio") else ""
    clip = f"clipped at norm {train['max_grad_norm']:g}" if train["max_grad_norm"] > 0 else "not clipped"
    evaluated = f"every {train['eval_every']} steps" if train.get("eval_every") else "after the last step"
    return [
        ("optimizer steps", steps),
        ("epochs", f"{last.get('epoch', 0):g} of {train['epochs']}"),
        ("learning rate", f"{train['lr']:g}, {train['scheduler']} schedule{warmup}"),
        ("optimizer", f"{train['optimizer']}, weight decay {train['weight_decay']:g}, gradients {clip}"),
        (
            "batch",
            f"{per_step} items a step: micro-batch {train['micro_batch_size']} x {processes} process"
            f"{'es' if processes != 1 else ''} x {train['grad_accum_steps']} accumulated",
        ),
        ("precision", f"weights {values['model'].get('dtype', 'fp32')}, mixed precision {train['mixed_precision']}"),
        ("held-out evaluation", evaluated),
        ("seed", str(values["seed"])),
    ]


# ---------------------------------------------------------------------------------------------- the export's card
def write_export_card(out: Path, adapter: Path, base: str, head: str, dtype: str, command: str) -> Path:
    """Write ``out/README.md`` for the merge of ``adapter`` into ``base``, carrying over the adapter run's card (its
    sections and charts) or, without one, the held-out results of the run's metrics.jsonl."""
    earlier = read_front_matter(adapter / CARD_NAME)
    earlier_sections = card_sections(adapter / CARD_NAME) if "tunekit" in (earlier.get("tags") or []) else {}
    root = root_base(base)
    metadata: dict[str, Any] = {}
    base_model = (
        hub_model_id(root) or hub_ids(earlier.get("base_model")) or hub_ids(base_metadata(root).get("base_model"))
    )
    if base_model:
        metadata["base_model"] = base_model
    metadata["library_name"] = "transformers"
    metadata["pipeline_tag"] = "text-classification" if head == "score" else "text-generation"
    carried_tags = [t for t in earlier.get("tags") or [] if t != "tunekit"] if earlier_sections else []
    metadata["tags"] = ["tunekit", "export", *carried_tags]
    if earlier_sections and earlier.get("datasets"):
        metadata["datasets"] = earlier["datasets"]
    metadata.update(licence(earlier) or licence(base_metadata(root)))
    kind = "reward model" if head == "score" else "model"
    parts = [
        f"# {out.name}",
        f"A plain transformers {kind} ({dtype}): the merge of the adapter `{adapter}` into "
        f"{_describe_base(base)}, made by `python -m tunekit.recipes.export`. It loads without peft.",
    ]
    if base != root:
        parts.append(f"That base is itself an earlier run's adapter; the whole chain down to `{root}` is merged in.")
    if earlier_sections:
        parts += ["## The adapter run", "Carried over from the adapter's own card:"]
        for title in RUN_SECTIONS:
            if title in earlier_sections:
                parts += [f"### {title}", earlier_sections[title]]
        copy_charts(adapter, out)
    elif (adapter.parent / "metrics.jsonl").is_file():
        parts += [
            "## The adapter run",
            "### Held-out results",
            held_out_section(read_metrics(adapter.parent / "metrics.jsonl")),
        ]
    parts += [
        "## Reproduce",
        "From the adapter folder (the adapter run's own card says how to repeat that run):",
        fenced(command, "bash"),
        "## Load",
        fenced(loading_snippet(str(out), head, None, str(out)), "python"),
        *scoring_note(head),
        "## Upload",
        upload_note(str(out), local_base=metadata.get("base_model") is None),
    ]
    path = out / CARD_NAME
    path.write_text(document(metadata, parts))
    return path


def _describe_base(path: str) -> str:
    """Words for the model a run started from (a Hub id, a folder, an embedded model or its cached folder)."""
    folder = Path(path)
    if folder.parent == cache_dir() / "models" and folder.name.rpartition("-")[0] in TINY_MODELS:
        path = folder.name.rpartition("-")[0]  # what the config called it
    if path in TINY_MODELS:
        return f"`{path}` (tunekit's embedded model, random weights)"
    repo = hub_model_id(path)
    if repo is not None:
        return f"[{repo}](https://huggingface.co/{repo})"
    if (Path(path) / "adapter_config.json").is_file():
        return f"`{path}` (an earlier run's adapter, merged into its base)"
    return f"`{path}`"


def _as_yaml(value: Any) -> str:
    """A config value as config.yaml spells it (true, null, '{prompt}')."""
    return yaml.safe_dump(value).removesuffix("...\n").strip()


def _setting(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | set | tuple):
        return ", ".join(sorted({str(v) for v in value}))  # peft adds its own defaults to modules_to_save, twice
    return str(value)


def _at(point: tuple[int, float]) -> str:
    return f"{point[1]:.6g} (step {point[0]})"
