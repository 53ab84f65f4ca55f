"""The prompts an AI-feedback command works through, with each row's prompt as it was written.

The rows these commands write are read again by the sft, reward and dpo recipes, which apply their own
``data.prompt_template`` (or chat template) to the ``prompt`` column. So the column must hold the prompt as the
data gave it, not the text the policy was prompted with; :class:`~tunekit.data.prompts.PromptExample` keeps only
the latter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunekit.data import synthetic
from tunekit.data.prompts import PromptDataConfig, PromptExample, load_prompts
from tunekit.data.sources import train_eval_rows
from tunekit.feedback.chunks import digest


@dataclass
class FeedbackPrompt:
    example: PromptExample  # the prompt as the policy sees it (template applied, tokenized) and the row's columns
    raw: str | list[dict[str, str]]  # the prompt column as the row holds it: a string or chat messages

    @property
    def readable(self) -> str:
        """The prompt as a person (or an LLM judge's rubric) reads it: the string as written, or chat messages as
        a plain transcript. Not the policy's rendered text, whose chat-template markers would land inside the
        judge's own conversation, where its tokenizer would read them as special tokens."""
        if isinstance(self.raw, str):
            return self.raw
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in self.raw)


def read_prompts(config: PromptDataConfig, tokenizer: Any, seed: int) -> tuple[list[FeedbackPrompt], int]:
    """Every training prompt of ``config`` (a held-out share, with ``data.eval_fraction`` above 0, is left for
    evaluation) and the number dropped as empty. Errors name the file and row (:func:`load_prompts`)."""
    read = load_prompts(config, tokenizer, seed)
    # The same rows again, to recover each one's prompt column: read with the same seed, they are the same rows
    # (positions survive any held-out split), and reading prompt rows is cheap beside sampling from a model.
    rows, _ = train_eval_rows(config, seed, synthetic.prompts_with_answers)
    by_position = dict(zip(rows.positions, rows.rows, strict=True))  # type: ignore[arg-type]
    return [FeedbackPrompt(p, by_position[p.index][config.prompt_column]) for p in read.train], read.empty_dropped


def prompts_digest(prompts: list[FeedbackPrompt]) -> str:
    """What a resumed run compares to know that it works through the same prompts."""
    return digest([[p.raw, p.example.columns, p.example.index] for p in prompts])
