"""Constitutional critique and revision: the model answers each prompt, critiques its answer against a principle
drawn from a YAML file, and revises it.

    python -m tunekit.recipes.constitution output_dir=runs/constitution      # tiny model, generated prompts
    python -m tunekit.recipes.constitution model.path=<chat model> data.path=prompts.jsonl principles=my.yaml
    python -m tunekit.recipes.sft data.path=runs/constitution/sft.jsonl      # train on the revisions
    python -m tunekit.recipes.dpo data.path=runs/constitution/pairs.jsonl    # or prefer them to the originals
    python -m tunekit.recipes.constitution output_dir=runs/constitution resume=auto   # continue a killed run

Writes sft.jsonl (``prompt``, ``completion`` = the revised answer, ``principle``, ``critique`` and the row's other
columns), pairs.jsonl (``prompt``, ``chosen`` = revised, ``rejected`` = original, ``principle``, the other
columns), progress.json and config.yaml. Nothing is trained. See docs/ai-feedback.md.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.config import to_dict
from tunekit.data.prompts import PromptDataConfig
from tunekit.errors import require
from tunekit.eval.model import Device, check_causal_lm, load_eval_model, resolve_device
from tunekit.fast import fast_paths_of
from tunekit.feedback.chunks import ChunkedRun, ChunkOutput, run_settings
from tunekit.feedback.constitution import (
    conversation_prompt,
    critique_conversation,
    load_constitution,
    revision_conversation,
)
from tunekit.feedback.prompts import FeedbackPrompt, prompts_digest, read_prompts
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.recipes.common import parse_args, run_command, say
from tunekit.rl.rollout import SamplingConfig, generate_rollout

SFT_FILE, PAIRS_FILE = "sft.jsonl", "pairs.jsonl"


def _constitution_data() -> PromptDataConfig:
    return PromptDataConfig(eval_fraction=0.0, synthetic_size=64)


def _constitution_sampling() -> SamplingConfig:
    return SamplingConfig(num_generations=1, max_new_tokens=48, temperature=0.7)


@dataclass
class ConstitutionConfig:
    # Where sft.jsonl and pairs.jsonl go; default runs/constitution-<date>-<time>. A fresh run needs it absent or
    # empty.
    output_dir: str | None = None
    # Seeds the sampling and the principle drawn for each prompt (each chunk from seed and its index, so a resumed
    # run draws what an uninterrupted one does), and the generated prompts of data.path "synthetic".
    seed: int = 0
    # "auto" continues the run in output_dir after its last completed chunk (null: a fresh run).
    resume: str | None = None
    # The model that answers, critiques and revises: a base model, an adapter run's final/ (merged onto its base)
    # or a full run's final/. A chat model: the critique and revision are asked through its chat template.
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PromptDataConfig = field(default_factory=_constitution_data)
    # The principles and the critique and revision requests: a YAML file (see recipes/constitution/principles.yaml,
    # which relative paths also fall back to the repository for).
    principles: str = "recipes/constitution/principles.yaml"
    # The user turn asking for a critique, {principle} replaced by the principle's text (null: the principles
    # file's critique_template).
    critique_template: str | None = None
    # The user turn asking for the revised answer after the critique (null: the file's revision_template).
    revision_template: str | None = None
    # How the answer, the critique and the revision are each sampled; num_generations must be 1.
    sampling: SamplingConfig = field(default_factory=_constitution_sampling)
    # Prompts per chunk: rows and progress are saved after each, and resume=auto continues after the last one.
    chunk_size: int = 32
    # Prompts per generate call.
    batch_size: int = 16
    # Where the model runs: auto (cuda when there is a GPU, else cpu), cpu, or cuda.
    device: Device = "auto"
    # Show a progress bar over the prompts.
    progress: bool = True

    def __post_init__(self) -> None:
        n = self.sampling.num_generations
        require(n == 1, "sampling.num_generations", f"must be 1 (one answer per prompt is revised), got {n}")
        require(self.chunk_size >= 1, "chunk_size", f"must be at least 1, got {self.chunk_size}")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")


@dataclass
class ConstitutionResult:
    output_dir: Path
    counts: dict[str, float]  # the run's totals (see :func:`summary`)
    summary: str


def run(config: ConstitutionConfig) -> ConstitutionResult:
    started = time.perf_counter()
    if not config.output_dir:
        config.output_dir = f"runs/constitution-{time.strftime('%Y%m%d-%H%M%S')}"
    output_dir = Path(config.output_dir)
    check_causal_lm(config.model.path, "model.path")
    device = resolve_device(config.device)
    constitution = load_constitution(config.principles, config.critique_template, config.revision_template)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    prompts, empty = read_prompts(config.data, tokenizer, config.seed)
    chunked = ChunkedRun(
        output_dir,
        config.resume,
        [SFT_FILE, PAIRS_FILE],
        run_settings(to_dict(config)),
        prompts_digest(prompts),
        len(prompts),
        config.chunk_size,
    )
    say(f"data: {len(prompts)} prompts, {empty} dropped as empty; {len(constitution.principles)} principles")
    if chunked.resumed:
        say(f"resuming after chunk {chunked.state.chunks_done}: {chunked.state.prompts_done} prompts done")
    model = load_eval_model(config.model, device)
    say(f"model: {config.model.path} on {device}; {fast_paths_of(model).summary()}")
    config.model.fast_paths = fast_paths_of(model).resolved(config.model.fast_paths)
    chunked.begin(to_dict(config))

    def generate(examples: list) -> list[str]:
        return generate_rollout(model, tokenizer, examples, config.sampling).completions

    def revise(chunk: list[FeedbackPrompt], seed: int) -> ChunkOutput:
        draw = random.Random(seed)
        principles = [draw.choice(constitution.principles) for _ in chunk]
        sft, pairs, counts = [], [], Counter()
        for start in range(0, len(chunk), config.batch_size):
            batch, chosen = chunk[start : start + config.batch_size], principles[start : start + config.batch_size]
            answers = generate([p.example for p in batch])
            asks = [constitution.critique_request(principle) for principle in chosen]
            critiques = generate(
                [
                    conversation_prompt(critique_conversation(p.raw, a, ask), tokenizer, p.example)
                    for p, a, ask in zip(batch, answers, asks, strict=True)
                ]
            )
            revisions = generate(
                [
                    conversation_prompt(
                        revision_conversation(p.raw, a, ask, c, constitution.revision_request(principle)),
                        tokenizer,
                        p.example,
                    )
                    for p, a, ask, c, principle in zip(batch, answers, asks, critiques, chosen, strict=True)
                ]
            )
            for p, principle, answer, critique, revision in zip(
                batch, chosen, answers, critiques, revisions, strict=True
            ):
                rows = revised_rows(p, principle.name, answer, critique, revision, counts)
                sft += rows[:1]
                pairs += rows[1:]
        return ChunkOutput({SFT_FILE: sft, PAIRS_FILE: pairs}, dict(counts))

    counts = chunked.run(prompts, revise, config.seed, "constitution", config.progress, postfix=_postfix)
    line = summary(counts, output_dir)
    say(line)
    say(f"done in {time.perf_counter() - started:.1f} s; run directory {output_dir}")
    return ConstitutionResult(output_dir, counts, line)


def revised_rows(
    prompt: FeedbackPrompt, principle: str, answer: str, critique: str, revision: str, counts: Counter
) -> list[dict[str, Any]]:
    """``[sft row, pair]``, ``[sft row]`` or ``[]`` for one prompt, counting what is left out and why: an empty
    revision gives neither, and a pair needs an original that is not empty and differs from the revision."""
    counts["prompts"] += 1
    counts[f"principle/{principle}"] += 1
    if not revision.strip():
        counts["empty_revision"] += 1
        return []
    columns = prompt.example.columns
    sft = {"prompt": prompt.raw, "completion": revision, "principle": principle, "critique": critique}
    rows = [sft | {k: v for k, v in columns.items() if k not in sft}]
    counts["sft_rows"] += 1
    if not answer.strip():
        counts["empty_original"] += 1
    elif revision.strip() == answer.strip():
        counts["unchanged"] += 1
    else:
        pair = {"prompt": prompt.raw, "chosen": revision, "rejected": answer, "principle": principle}
        rows.append(pair | {k: v for k, v in columns.items() if k not in pair})
        counts["pairs"] += 1
    return rows


def summary(counts: dict[str, float], output_dir: Path) -> str:
    """The closing line: rows written, pairs left out and why, and how often each principle was drawn."""
    n = lambda key: int(counts.get(key, 0))  # noqa: E731
    drawn = ", ".join(f"{k.split('/', 1)[1]} {int(v)}" for k, v in sorted(counts.items()) if k.startswith("principle/"))
    return (
        f"revised {n('prompts')} prompts: {n('sft_rows')} SFT rows to {output_dir / SFT_FILE} and {n('pairs')} pairs "
        f"to {output_dir / PAIRS_FILE}; left out of the pairs: {n('unchanged')} revisions equal to the original, "
        f"{n('empty_original')} empty originals; {n('empty_revision')} empty revisions left out of both; "
        f"principles drawn: {drawn or 'none'}"
    )


def _postfix(counts: dict[str, float]) -> dict[str, Any]:
    return {"sft": int(counts.get("sft_rows", 0)), "pairs": int(counts.get("pairs", 0))}


def main(argv: list[str] | None = None) -> ConstitutionResult:
    return run(parse_args(ConstitutionConfig, argv, "constitution", __doc__))


if __name__ == "__main__":
    run_command(main)
