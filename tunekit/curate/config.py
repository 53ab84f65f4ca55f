"""The curate command's keys (docs/data-mixtures.md#curation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tunekit.curate.rows import Columns, CurateFormat
from tunekit.errors import require

PII_KINDS = ("email", "phone", "ip_address", "credit_card", "secret")


@dataclass
class NearDuplicateConfig:
    # Drop rows whose MinHash-estimated Jaccard similarity to an earlier kept row (over word shingles of the
    # normalised text) is at least threshold.
    enabled: bool = True
    # Jaccard similarity at or above which two rows are near-duplicates.
    threshold: float = 0.8
    # MinHash permutations: more estimate the similarity more closely and cost more time and memory.
    num_perm: int = 128
    # Words per shingle.
    shingle: int = 5

    def __post_init__(self) -> None:
        require(0 < self.threshold <= 1, "threshold", f"must be in (0, 1], got {self.threshold}")
        require(self.num_perm >= 16, "num_perm", f"must be at least 16, got {self.num_perm}")
        require(self.shingle >= 1, "shingle", f"must be at least 1, got {self.shingle}")


@dataclass
class FilterConfig:
    # Rows with fewer tokens than this (the whole row's text, under tokenizer) are dropped.
    min_tokens: int = 1
    # Rows with more tokens than this are dropped (null: no limit).
    max_tokens: int | None = None
    # Drop rows with an empty or whitespace-only turn: a message, a completion, a chosen or rejected response.
    empty_turns: bool = True
    # Drop rows in which more than this share of word n-grams repeat an earlier one (1: off); looping generations
    # score near 1, GSM8K's worked answers at most 0.45.
    max_repetition: float = 0.5
    # Words per n-gram of the repetition measure.
    repetition_ngram: int = 3
    # Keep only rows whose language (py3langid, offline) is one of these ISO 639-1 codes, e.g. [en]; []: off.
    languages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(self.min_tokens >= 0, "min_tokens", f"must be 0 or more, got {self.min_tokens}")
        require(
            self.max_tokens is None or self.max_tokens >= max(self.min_tokens, 1),
            "max_tokens",
            f"must be at least min_tokens and 1 (or null), got {self.max_tokens}",
        )
        require(0 < self.max_repetition <= 1, "max_repetition", f"must be in (0, 1], got {self.max_repetition}")
        require(self.repetition_ngram >= 1, "repetition_ngram", f"must be at least 1, got {self.repetition_ngram}")


@dataclass
class DecontaminationConfig:
    # Evaluation files (any supported format); training rows sharing a word n-gram with any of their strings are
    # removed and listed. []: off.
    paths: list[str] = field(default_factory=list)
    # Words per n-gram (13, as GPT-3's authors used).
    ngram: int = 13
    # Evaluation strings shorter than ngram words count whole if they have at least this many words; shorter ones
    # are skipped.
    min_words: int = 8

    def __post_init__(self) -> None:
        require(self.ngram >= 1, "ngram", f"must be at least 1, got {self.ngram}")
        require(1 <= self.min_words <= self.ngram, "min_words", f"must be in [1, ngram], got {self.min_words}")


@dataclass
class QualityConfig:
    # none; reward: score each kept row's text with the reward model at model; perplexity: score it by its negative
    # perplexity under the causal LM at model. Then keep the top keep_fraction.
    method: Literal["none", "reward", "perplexity"] = "none"
    # The scoring model: a reward run's final/ (reward) or any causal LM (perplexity).
    model: str | None = None
    # Share of the rows left by the other checks to keep, best scores first (ties: earlier rows first).
    keep_fraction: float = 1.0
    # Texts scored per forward pass.
    batch_size: int = 8
    # Tokens scored per text (longer texts are cut).
    max_length: int = 512

    def __post_init__(self) -> None:
        require(0 < self.keep_fraction <= 1, "keep_fraction", f"must be in (0, 1], got {self.keep_fraction}")
        require(self.method == "none" or self.model is not None, "model", f"is needed for method {self.method}")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        require(self.max_length >= 2, "max_length", f"must be at least 2, got {self.max_length}")


@dataclass
class CurateConfig:
    # Data files to curate, read in order as one stream: .jsonl, .json, .parquet, .csv (one path or a list).
    inputs: str | list[str] = field(default_factory=list)
    # The cleaned rows, as JSON Lines (required); every recipe reads it as data.path.
    output: str | None = None
    # The JSON report (null: the output's path with .report.json).
    report: str | None = None
    # Row format: auto decides from the first row's columns (messages, chosen + rejected, prompt + completion,
    # text, prompt alone), or text, prompt_completion, messages, pairs, prompts.
    format: CurateFormat = "auto"
    # The text column (text rows).
    text_column: str = "text"
    # The prompt column (prompt_completion, pairs, prompts rows).
    prompt_column: str = "prompt"
    # The completion column (prompt_completion rows).
    completion_column: str = "completion"
    # The messages column (messages rows).
    messages_column: str = "messages"
    # The chosen column (pairs).
    chosen_column: str = "chosen"
    # The rejected column (pairs).
    rejected_column: str = "rejected"
    # Tokenizer that filters.min_tokens and max_tokens count with: a model directory, hub id or embedded model.
    tokenizer: str = "tiny-llama"
    # Drop rows whose normalised text (lower case, no punctuation, one space) repeats an earlier row's.
    exact_duplicates: bool = True
    near_duplicates: NearDuplicateConfig = field(default_factory=NearDuplicateConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    # Personal data and secrets replaced by typed placeholders, any of: email, phone, ip_address, credit_card,
    # secret ([]: none).
    pii: list[str] = field(default_factory=lambda: list(PII_KINDS))
    decontaminate: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    # Removed rows listed in the report for each reason (all are counted); decontaminated rows are always all listed.
    max_listed: int = 100
    # Show progress bars on the terminal.
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        unknown = [kind for kind in self.pii if kind not in PII_KINDS]
        require(not unknown, "pii", f"has unknown kinds {unknown}; choose from {', '.join(PII_KINDS)}")
        require(self.max_listed >= 0, "max_listed", f"must be 0 or more, got {self.max_listed}")

    def columns(self) -> Columns:
        return Columns(
            self.text_column,
            self.prompt_column,
            self.completion_column,
            self.messages_column,
            self.chosen_column,
            self.rejected_column,
        )
