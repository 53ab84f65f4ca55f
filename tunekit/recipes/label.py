"""RLAIF labelling: sample k responses to each prompt from a policy, judge them, and write preference pairs.

    python -m tunekit.recipes.sft --config recipes/sft/tiny-warmstart.yaml   # the policy the default labels with
    python -m tunekit.recipes.label output_dir=runs/label                    # math_correct judges, offline
    python -m tunekit.recipes.dpo data.path=runs/label/pairs.jsonl           # or the reward recipe, on the pairs
    python -m tunekit.recipes.label model.path=tiny-llama judge.name=llm:tiny-llama judge.rubric=helpfulness
    python -m tunekit.recipes.label output_dir=runs/label resume=auto       # continue a killed run

Writes pairs.jsonl (``prompt``, ``chosen``, ``rejected``, the judge's ``chosen_score`` and ``rejected_score`` where
it scores, ``judge_margin``, ``consistency`` for pairwise LLM judges, and the row's other columns), which the reward
and dpo recipes read as it is; progress.json (the chunks done) and config.yaml. Nothing is trained. See
docs/ai-feedback.md.
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
from tunekit.feedback.ranking import Choice, rank_by_score, rank_round_robin
from tunekit.judges.load import JudgeConfig, check_judge, load_judge
from tunekit.judges.rubric import load_rubric, row_values
from tunekit.judges.scoring import ScoringJudge
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.recipes.common import check_prepared_path, parse_args, run_command, say
from tunekit.rl.reward_calls import check_reward_rows
from tunekit.rl.rewards import RewardSource, load_reward_function
from tunekit.rl.rollout import SamplingConfig, generate_rollout

PAIRS_FILE = "pairs.jsonl"
HOW_TO_PREPARE = (
    "the default labelling config samples from the SFT warm start that `python -m tunekit.recipes.sft --config "
    "recipes/sft/tiny-warmstart.yaml` writes; run that first, or set model.path"
)


def _warm_model() -> ModelConfig:
    return ModelConfig(path="runs/sft-warmstart/final")


def _label_data() -> PromptDataConfig:
    # Every prompt is labelled; hold some out (eval_fraction) to keep prompts the trained model has not seen.
    return PromptDataConfig(eval_fraction=0.0, synthetic_size=512)


def _label_sampling() -> SamplingConfig:
    return SamplingConfig(num_generations=4, max_new_tokens=16, temperature=1.0)


def _label_judge() -> JudgeConfig:
    return JudgeConfig(name="math_correct")


@dataclass
class LabelConfig:
    # Where pairs.jsonl goes; default runs/label-<date>-<time>. A fresh run needs it absent or empty.
    output_dir: str | None = None
    # Seeds the sampling (each chunk from seed and its index, so a resumed run samples what an uninterrupted one
    # does) and the generated prompts of data.path "synthetic".
    seed: int = 0
    # "auto" continues the run in output_dir after its last completed chunk (null: a fresh run).
    resume: str | None = None
    # The policy the responses are sampled from: a base model, an adapter run's final/ (merged onto its base) or a
    # full run's final/.
    model: ModelConfig = field(default_factory=_warm_model)
    data: PromptDataConfig = field(default_factory=_label_data)
    # How the k responses per prompt are sampled; num_generations is k, at least 2.
    sampling: SamplingConfig = field(default_factory=_label_sampling)
    # Who judges the responses (docs/ai-feedback.md): a reward function (math_correct), a reward model
    # (model:<reward run>/final) or an LLM judge (llm:<model>) with a rubric.
    judge: JudgeConfig = field(default_factory=_label_judge)
    # A pair is kept when its judge_margin (in the judge's units: a score difference, or 2 P(chosen wins) - 1 for a
    # pairwise LLM judge) exceeds this; the rest are dropped and counted.
    min_margin: float = 0.0
    # Prompts per chunk: pairs and progress are saved after each, and resume=auto continues after the last one.
    chunk_size: int = 64
    # Prompts per generate call (each sampled num_generations times).
    batch_size: int = 16
    # Where the policy and an LLM judge run: auto (cuda when there is a GPU, else cpu), cpu, or cuda.
    device: Device = "auto"
    # Show a progress bar over the prompts.
    progress: bool = True

    def __post_init__(self) -> None:
        k = self.sampling.num_generations
        require(k >= 2, "sampling.num_generations", f"must be at least 2, got {k}: a pair needs two responses")
        require(self.chunk_size >= 1, "chunk_size", f"must be at least 1, got {self.chunk_size}")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")


@dataclass
class LabelResult:
    output_dir: Path
    counts: dict[str, float]  # the run's totals (see :func:`summary`)
    summary: str


def run(config: LabelConfig) -> LabelResult:
    started = time.perf_counter()
    if not config.output_dir:
        config.output_dir = f"runs/label-{time.strftime('%Y%m%d-%H%M%S')}"
    output_dir = Path(config.output_dir)
    # Everything a user can get wrong is checked before anything loads for long or is written.
    check_prepared_path("model.path", config.model.path, HOW_TO_PREPARE)
    check_causal_lm(config.model.path, "model.path")
    device = resolve_device(config.device)
    pairwise = config.judge.is_llm and load_rubric(config.judge.rubric).kind == "pairwise"
    # A reward function or reward model is checked by loading it (the loading names what is wrong); an LLM judge
    # is checked by name and rubric here and loads after the data has been checked.
    judge, sources = None, []
    if config.judge.is_llm or not config.judge.name.strip():
        check_judge(config.judge)
    else:
        sources = [
            (RewardSource(config.judge.name, kwargs=dict(config.judge.kwargs)), load_reward_function(config.judge.name))
        ]
        judge = ScoringJudge(*sources[0])
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    prompts, empty = read_prompts(config.data, tokenizer, config.seed)
    check_rows(config.judge, sources, prompts)
    settings = run_settings(to_dict(config))
    chunked = ChunkedRun(
        output_dir, config.resume, [PAIRS_FILE], settings, prompts_digest(prompts), len(prompts), config.chunk_size
    )
    k = config.sampling.num_generations
    say(f"data: {len(prompts)} prompts, {empty} dropped as empty; {k} responses each, judged by {config.judge.name}")
    if chunked.resumed:
        say(f"resuming after chunk {chunked.state.chunks_done}: {chunked.state.prompts_done} prompts done")

    policy = load_eval_model(config.model, device)
    say(f"policy: {config.model.path} on {device}; {fast_paths_of(policy).summary()}")
    if judge is None:
        judge = load_judge(config.judge, device)
    config.model.fast_paths = fast_paths_of(policy).resolved(config.model.fast_paths)
    chunked.begin(to_dict(config))

    def label(chunk: list[FeedbackPrompt], seed: int) -> ChunkOutput:
        rows: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        for start in range(0, len(chunk), config.batch_size):
            batch = chunk[start : start + config.batch_size]
            examples = [p.example for p in batch]
            rollout = generate_rollout(policy, tokenizer, examples, config.sampling)
            samples = [rollout.completions[i * k : (i + 1) * k] for i in range(len(batch))]
            # Reward functions read the prompt as the policy saw it, as in GRPO; an LLM judge reads it as written.
            texts = [p.readable if config.judge.is_llm else p.example.prompt for p in batch]
            rank = rank_round_robin if pairwise else rank_by_score
            ranking = rank(judge, texts, [p.example.columns for p in batch], samples)
            counts.update(comparisons=ranking.comparisons, consistent=ranking.consistent)
            for prompt, choice in zip(batch, ranking.choices, strict=True):
                counts["prompts"] += 1
                if choice is None:
                    counts["identical"] += 1
                elif choice.margin <= config.min_margin:
                    counts["low_margin"] += 1
                else:
                    rows.append(pair_row(prompt, choice))
                    counts.update(pairs=1, margin_sum=choice.margin, pairs_consistent=bool(choice.consistent))
        return ChunkOutput({PAIRS_FILE: rows}, dict(counts))

    counts = chunked.run(prompts, label, config.seed, "label", config.progress, postfix=_postfix)
    line = summary(counts, config.min_margin, output_dir / PAIRS_FILE, pairwise and config.judge.both_orders)
    say(line)
    say(f"done in {time.perf_counter() - started:.1f} s; run directory {output_dir}")
    return LabelResult(output_dir, counts, line)


def check_rows(config: JudgeConfig, sources: list, prompts: list[FeedbackPrompt]) -> None:
    """Every row has what the judge reads, named by file and line before anything is written: a reward function's
    columns (``answer`` for math_correct; ``sources``: the judge's reward source and function), or an LLM judge's
    rubric fields that come from the data."""
    if sources:
        check_reward_rows(sources, [p.example for p in prompts])
        return
    rubric = load_rubric(config.rubric)
    for p in prompts:
        row_values(rubric, {name: [value] for name, value in p.example.columns.items()}, 0, p.example.where)


def pair_row(prompt: FeedbackPrompt, choice: Choice) -> dict[str, Any]:
    """One line of pairs.jsonl: the pair's own fields, then the row's other columns (the pair's win on a name
    clash)."""
    row: dict[str, Any] = {"prompt": prompt.raw, "chosen": choice.chosen, "rejected": choice.rejected}
    if choice.chosen_score is not None:
        row.update(chosen_score=choice.chosen_score, rejected_score=choice.rejected_score)
    row["judge_margin"] = choice.margin
    if choice.consistent is not None:
        row["consistency"] = choice.consistent
    return row | {k: v for k, v in prompt.example.columns.items() if k not in row}


def summary(counts: dict[str, float], min_margin: float, path: Path, orders: bool) -> str:
    """The closing line: pairs written, dropped and why, mean margin and (pairwise judges) order consistency."""
    pairs = int(counts.get("pairs", 0))
    mean = counts.get("margin_sum", 0.0) / pairs if pairs else float("nan")
    line = (
        f"labelled {int(counts.get('prompts', 0))} prompts: {pairs} pairs written to {path}; dropped "
        f"{int(counts.get('low_margin', 0))} with margin <= {min_margin:g} and {int(counts.get('identical', 0))} "
        f"with fewer than two distinct non-empty responses; mean margin {mean:.3f}"
    )
    if orders:
        asked = int(counts.get("comparisons", 0))
        rate = counts.get("consistent", 0) / asked if asked else float("nan")
        kept = counts.get("pairs_consistent", 0) / pairs if pairs else float("nan")
        line += f"; order consistency {rate:.3f} over {asked} comparisons ({kept:.3f} on the written pairs)"
    return line


def _postfix(counts: dict[str, float]) -> dict[str, Any]:
    return {
        "pairs": int(counts.get("pairs", 0)),
        "dropped": int(counts.get("low_margin", 0) + counts.get("identical", 0)),
    }


def main(argv: list[str] | None = None) -> LabelResult:
    return run(parse_args(LabelConfig, argv, "label", __doc__))


if __name__ == "__main__":
    run_command(main)
