"""Sequence-level distillation data: a teacher writes completions for a prompt file, and the result is SFT data.

    python -m tunekit.recipes.sft --config recipes/sft/tiny-warmstart.yaml     # the teacher the default uses
    python -m tunekit.recipes.generate output_dir=runs/teacher-data           # greedy answers to generated prompts
    python -m tunekit.recipes.sft data.path=runs/teacher-data/sft.jsonl model.path=tiny-llama-small
    python -m tunekit.recipes.generate output_dir=runs/teacher-data resume=auto   # continue a killed run
    python -m tunekit.recipes.generate keep_if=math_correct sampling.num_generations=4   # keep right answers only

Writes sft.jsonl (``prompt`` as the data wrote it, ``completion``, and the row's other columns), which the sft and
distill recipes read as it is, plus progress.json and config.yaml. It works a chunk of prompts at a time and
resume=auto continues after the last whole chunk, with the bytes an uninterrupted run would have written. With
``keep_if`` (a checker, e.g. math_correct on rows with an answer column), only completions it scores above
``min_score`` are written: rejection sampling. Nothing is trained. See docs/distill.md.
"""

from __future__ import annotations

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
from tunekit.feedback.prompts import FeedbackPrompt, prompts_digest, read_prompts
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.recipes.common import check_prepared_path, parse_args, run_command, say
from tunekit.rl.reward_calls import check_reward_rows, compute_rewards
from tunekit.rl.rewards import RewardSource, load_reward_function
from tunekit.rl.rollout import SamplingConfig, generate_rollout

SFT_FILE = "sft.jsonl"
HOW_TO_PREPARE = (
    "the default generation config's teacher is the SFT warm start that `python -m tunekit.recipes.sft --config "
    "recipes/sft/tiny-warmstart.yaml` writes; run that first, or set model.path"
)


def _teacher() -> ModelConfig:
    return ModelConfig(path="runs/sft-warmstart/final")


def _prompts() -> PromptDataConfig:
    return PromptDataConfig(eval_fraction=0.0, synthetic_size=4000)


def _greedy() -> SamplingConfig:
    # One greedy completion per prompt: the teacher's single best guess, as sequence-level distillation uses it.
    return SamplingConfig(num_generations=1, max_new_tokens=32, temperature=0.0)


@dataclass
class GenerateConfig:
    # Where sft.jsonl goes; default runs/generate-<date>-<time>. A fresh run needs it absent or empty.
    output_dir: str | None = None
    # Seeds the sampling (each chunk from seed and its index) and the generated prompts of data.path "synthetic".
    seed: int = 0
    # "auto" continues the run in output_dir after its last completed chunk (null: a fresh run).
    resume: str | None = None
    # The teacher: a base model, an adapter run's final/ (merged onto its base) or a full run's final/.
    model: ModelConfig = field(default_factory=_teacher)
    data: PromptDataConfig = field(default_factory=_prompts)
    # How completions are sampled: num_generations per prompt, each written as its own row (temperature 0: greedy).
    sampling: SamplingConfig = field(default_factory=_greedy)
    # A checker (reward-function name, as GRPO's rewards take) that each completion must score above min_score to be
    # written, e.g. math_correct on rows with an answer column; null writes every completion.
    keep_if: str | None = None
    # A completion is written when keep_if scores it above this.
    min_score: float = 0.5
    # Prompts per chunk: rows and progress are saved after each, and resume=auto continues after the last one.
    chunk_size: int = 256
    # Prompts per generate call (each sampled num_generations times).
    batch_size: int = 64
    # Where the teacher runs: auto (cuda when there is a GPU, else cpu), cpu, or cuda.
    device: Device = "auto"
    # Show a progress bar over the prompts.
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.chunk_size >= 1, "chunk_size", f"must be at least 1, got {self.chunk_size}")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        require(self.keep_if is None or bool(self.keep_if.strip()), "keep_if", "is empty; name a checker or null")


@dataclass
class GenerateResult:
    output_dir: Path
    counts: dict[str, float]


def run(config: GenerateConfig) -> GenerateResult:
    started = time.perf_counter()
    if not config.output_dir:
        config.output_dir = f"runs/generate-{time.strftime('%Y%m%d-%H%M%S')}"
    output_dir = Path(config.output_dir)
    check_prepared_path("model.path", config.model.path, HOW_TO_PREPARE)
    check_causal_lm(config.model.path, "model.path")
    device = resolve_device(config.device)
    checker = []
    if config.keep_if is not None:
        checker = [(RewardSource(config.keep_if), load_reward_function(config.keep_if))]
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    prompts, empty = read_prompts(config.data, tokenizer, config.seed)
    if checker:
        check_reward_rows(checker, [p.example for p in prompts])
    chunked = ChunkedRun(
        output_dir,
        config.resume,
        [SFT_FILE],
        run_settings(to_dict(config)),
        prompts_digest(prompts),
        len(prompts),
        config.chunk_size,
    )
    k = config.sampling.num_generations
    kept = f", kept if {config.keep_if} scores above {config.min_score:g}" if checker else ""
    say(f"data: {len(prompts)} prompts, {empty} dropped as empty; {k} completion(s) each{kept}")
    if chunked.resumed:
        say(f"resuming after chunk {chunked.state.chunks_done}: {chunked.state.prompts_done} prompts done")
    teacher = load_eval_model(config.model, device)
    say(f"teacher: {config.model.path} on {device}; {fast_paths_of(teacher).summary()}")
    config.model.fast_paths = fast_paths_of(teacher).resolved(config.model.fast_paths)
    chunked.begin(to_dict(config))

    def generate(chunk: list[FeedbackPrompt], seed: int) -> ChunkOutput:
        rows: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        for start in range(0, len(chunk), config.batch_size):
            batch = chunk[start : start + config.batch_size]
            rollout = generate_rollout(teacher, tokenizer, [p.example for p in batch], config.sampling)
            keep = [True] * len(rollout.completions)
            if checker:
                scores, _ = compute_rewards(checker, rollout.prompts, rollout.completions, rollout.columns)
                keep = (scores > config.min_score).tolist()
            for i, completion in enumerate(rollout.completions):
                prompt = batch[i // k]
                counts["completions"] += 1
                counts["truncated"] += int(rollout.truncated[i])
                if not completion.strip():
                    counts["empty"] += 1
                elif not keep[i]:
                    counts["rejected"] += 1
                else:
                    rows.append(sft_row(prompt, completion))
                    counts["written"] += 1
        return ChunkOutput({SFT_FILE: rows}, dict(counts))

    counts = chunked.run(prompts, generate, config.seed, "generate", config.progress, postfix=_postfix)
    say(summary(counts, output_dir / SFT_FILE, config.keep_if))
    say(f"done in {time.perf_counter() - started:.1f} s; run directory {output_dir}")
    return GenerateResult(output_dir, counts)


def sft_row(prompt: FeedbackPrompt, completion: str) -> dict[str, Any]:
    """One line of sft.jsonl: the prompt as the data wrote it and the teacher's completion, then the row's other
    columns (the two win on a name clash)."""
    row: dict[str, Any] = {"prompt": prompt.raw, "completion": completion}
    return row | {k: v for k, v in prompt.example.columns.items() if k not in row}


def summary(counts: dict[str, float], path: Path, keep_if: str | None) -> str:
    written, total = int(counts.get("written", 0)), int(counts.get("completions", 0))
    line = f"generated {total} completions: {written} written to {path}; {int(counts.get('empty', 0))} empty dropped"
    if keep_if is not None:
        line += f", {int(counts.get('rejected', 0))} rejected by {keep_if}"
    return line + f"; {int(counts.get('truncated', 0))} reached sampling.max_new_tokens"


def _postfix(counts: dict[str, float]) -> dict[str, Any]:
    return {"written": int(counts.get("written", 0))}


def main(argv: list[str] | None = None) -> GenerateResult:
    return run(parse_args(GenerateConfig, argv, "generate", __doc__))


if __name__ == "__main__":
    run_command(main)
