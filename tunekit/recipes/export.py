"""Merge a trained adapter into its base model and write a plain Hugging Face model directory.

    python -m tunekit.recipes.export adapter=runs/sft-.../final output_dir=merged/
    python -m tunekit.recipes.export adapter=runs/reward-.../final output_dir=merged-rm/ dtype=bf16

The base is the one recorded in the adapter (``base_model_name_or_path``) unless ``base`` names another; a
base that is itself an earlier run's adapter is merged too, so the whole chain lands in one model.
The merged model loads with ``AutoModelForCausalLM`` (or ``AutoModelForSequenceClassification`` for a reward
adapter) with no peft at all. Its README.md is a model card carrying over the adapter run's (docs/model-card.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunekit.errors import ConfigError, ModelError
from tunekit.models.adapters import check_mergeable
from tunekit.models.load import DTYPES, load_base, load_tokenizer
from tunekit.recipes.common import parse_args, run_command, say
from tunekit.train.card import write_export_card


@dataclass
class ExportConfig:
    # A PEFT adapter directory, usually a run's final/.
    adapter: str = ""
    # Where the merged model and the adapter's tokenizer are written (required).
    output_dir: str | None = None
    # The base to merge into; default: the base recorded in the adapter.
    base: str | None = None
    # Dtype the base is loaded in, merged in and saved in.
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Run code shipped inside the base's hub repository. Off unless you trust its author.
    trust_remote_code: bool = False


def export(config: ExportConfig) -> Path:
    from peft import PeftModel

    adapter = Path(config.adapter)
    adapter_config = adapter / "adapter_config.json"
    if not config.adapter or not adapter_config.is_file():
        raise ConfigError(f"adapter={config.adapter!r} is not a PEFT adapter directory (no adapter_config.json)")
    check_mergeable(adapter)
    if not config.output_dir:
        raise ConfigError("export needs output_dir=<directory for the merged model>")
    out = Path(config.output_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output_dir {out} is not empty; choose a new directory for the merged model")
    recorded = json.loads(adapter_config.read_text())
    base = config.base or recorded.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter_config} records no base model; pass base=<path or hub id>")
    is_score = recorded.get("task_type") == "SEQ_CLS"
    kwargs = {"dtype": DTYPES[config.dtype], "trust_remote_code": config.trust_remote_code}
    # A base that is itself an adapter directory (a run started from an earlier run's final/) is merged first.
    try:
        model = load_base(base, "score" if is_score else "causal-lm", kwargs)
    except ModelError as err:
        raise ModelError(f"the base of adapter {adapter}: {err}") from None
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tokenizer = load_tokenizer(str(adapter), config.trust_remote_code)
    if is_score:
        merged.config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    try:
        head = "score" if is_score else "causal-lm"
        write_export_card(out, adapter, base, head, config.dtype, export_command(config))
    except Exception as err:  # the merged model is saved; a card that cannot be written must not undo that
        say(f"warning: the merged model is saved, but its model card could not be written: {err}")
    say(f"merged {adapter} into {base}: {out}")
    return out


def export_command(config: ExportConfig) -> str:
    """The command line that repeats this export, for the merged model's card."""
    words = ["python -m tunekit.recipes.export", f"adapter={config.adapter}", f"output_dir={config.output_dir}"]
    if config.base:
        words.append(f"base={config.base}")
    if config.dtype != "fp32":
        words.append(f"dtype={config.dtype}")
    if config.trust_remote_code:
        words.append("trust_remote_code=true")
    return " ".join(words)


def main(argv: list[str] | None = None) -> Path:
    return export(parse_args(ExportConfig, argv, "export", __doc__))


if __name__ == "__main__":
    run_command(main)
