"""The text a model card is made of: Markdown pieces, and the parts that tell how to use the folder (loading it
with transformers and peft alone, reading a reward model's score, uploading it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunekit.models.load import resolve_model_path


def document(metadata: dict[str, Any], parts: list[str]) -> str:
    head = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n" + "\n\n".join(p.strip() for p in parts if p.strip()) + "\n"


def fenced(text: str, language: str) -> str:
    return f"```{language}\n{text}\n```"


def table(rows: list[tuple[str, str]]) -> str:
    return grid([("setting", "value"), *rows])


def grid(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def loading_snippet(folder: str, head: str, adapter: dict[str, Any] | None, base: str, dtype: str = "fp32") -> str:
    """Python that loads ``folder`` with transformers (and peft for an adapter) and no tunekit."""
    auto = "AutoModelForSequenceClassification" if head == "score" else "AutoModelForCausalLM"
    torch_dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}.get(dtype)
    as_stored = f", dtype={torch_dtype}" if torch_dtype else ""
    lines = ["import torch"] if torch_dtype else []
    if adapter is None:
        # A saved reward model's config.json records its one label; nothing to add.
        lines += [f"from transformers import {auto}, AutoTokenizer", "", f'folder = "{folder}"']
        lines += [f"model = {auto}.from_pretrained(folder{as_stored})"]
    else:
        base_path = resolve_model_path(base)
        # A run that started from an earlier run's adapter merged it into its base first; so does the snippet.
        earlier = head != "score" and (Path(base_path) / "adapter_config.json").is_file()
        peft_names = "AutoPeftModelForCausalLM, PeftModel" if earlier else "PeftModel"
        lines += [f"from peft import {peft_names}", f"from transformers import {auto}, AutoTokenizer", ""]
        lines += [f'folder = "{folder}"']
        if earlier:
            lines += [f'base = AutoPeftModelForCausalLM.from_pretrained("{base_path}"{as_stored}).merge_and_unload()']
        elif head == "score":
            # num_labels=1: the one-output head this run trained (two outputs, the default, cannot take its weights).
            lines += [f'base = {auto}.from_pretrained("{base_path}", num_labels=1{as_stored})']
        else:
            lines += [f'base = {auto}.from_pretrained("{base_path}"{as_stored})']
        lines += ["model = PeftModel.from_pretrained(base, folder)"]
    lines += ["tokenizer = AutoTokenizer.from_pretrained(folder)"]
    return "\n".join(lines)


def scoring_note(head: str) -> list[str]:
    if head != "score":
        return []
    return [
        "The score of a text is the head's output at its last token. Scored one text at a time, unpadded, that is "
        "what the model returns once `pad_token_id` is unset; left set, transformers would skip a final EOS that "
        "doubles as the pad token and read the token before it. For batches, tunekit's `RewardScorer` reads each "
        "row's last real token (docs/reward.md).",
        fenced(
            "model.config.pad_token_id = None\n"
            'score = model(**tokenizer("Question: What is 2 + 2?\\nAnswer: 4" + tokenizer.eos_token, '
            'return_tensors="pt")).logits[0, 0]',
            "python",
        ),
    ]


def upload_note(folder: str, local_base: bool) -> str:
    text = (
        f"tunekit never uploads anything. The folder is a complete Hugging Face repository (weights, tokenizer, this "
        f"card and its charts):\n\n{fenced(f'hf upload <user>/<repo> {folder}', 'bash')}"
    )
    if local_base:
        text += (
            "\n\nThe base model is not on the Hub (a local folder or tunekit's embedded model), so the front matter "
            "names no `base_model`: the Hub refuses anything but a Hub id there. If the folder is a copy of a Hub "
            "model, add `base_model: <its id>` before uploading."
        )
    return text
