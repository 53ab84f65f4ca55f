"""Evaluate a model: exact-match accuracy, perplexity and reward-model win rate, with greedy, sampled or best-of-n
generation, and lm-evaluation-harness tasks (lm_eval:<task>). Works on a base model, an adapter run's final/ or a
merged export (model.path).

    python -m tunekit.recipes.eval                                       # tiny model, generated arithmetic, offline
    python -m tunekit.recipes.eval model.path=runs/sft-warmstart/final
    python -m tunekit.recipes.eval --config recipes/eval/gsm8k-tiny.yaml
    python -m tunekit.recipes.eval --config recipes/eval/lm-eval-gsm8k.yaml   # needs pip install "tunekit[lm-eval]"

Writes results.json (metrics, counts, config), samples.jsonl (one line per prompt) and config.yaml into
output_dir. Nothing is trained. See docs/eval.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tunekit.data.sft import tokenize_rows
from tunekit.errors import require
from tunekit.eval.data import (
    EvalDataConfig,
    build_prompts,
    generation_rows,
    load_eval_rows,
    reference_answers,
    sft_data_config,
)
from tunekit.eval.judging import AgreementConfig, JudgeTaskConfig, agreement_task, judge_is_pairwise, judge_task
from tunekit.eval.lm_eval import LMEvalConfig, is_lm_eval_task, plan_lm_eval, run_lm_eval
from tunekit.eval.model import Device, check_causal_lm, load_eval_model, resolve_device
from tunekit.eval.opponent import REFERENCE, opponent_completions, prepare_opponent
from tunekit.eval.perplexity import perplexity
from tunekit.eval.results import EvalResult, write_results
from tunekit.eval.sampling import GenerationConfig, generate
from tunekit.eval.tasks import (
    GENERATION_TASKS,
    JUDGE_TASKS,
    ExactMatchConfig,
    WinRateConfig,
    exact_match,
    load_source,
    prompt_columns,
    selected_tasks,
    win_rate,
)
from tunekit.fast import fast_paths_of
from tunekit.judges.load import check_judge, load_judge
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.recipes.common import parse_args, run_command, say
from tunekit.rl.rewards import load_reward_sources
from tunekit.train.rundir import check_room_for_checkpoints, prepare_output_dir


@dataclass
class EvalConfig:
    # Where results go; default runs/eval-<date>-<time>. It must not hold a run already.
    output_dir: str | None = None
    # Seeds sampling (sample, best_of_n) and the generated rows of data.path "synthetic".
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    # One task or a list of them: exact_match, perplexity, win_rate, and lm-evaluation-harness tasks as
    # lm_eval:<task> (lm_eval:gsm8k; see the lm_eval section).
    tasks: str | list[str] = field(default_factory=lambda: ["exact_match", "perplexity"])
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    exact_match: ExactMatchConfig = field(default_factory=ExactMatchConfig)
    win_rate: WinRateConfig = field(default_factory=WinRateConfig)
    lm_eval: LMEvalConfig = field(default_factory=LMEvalConfig)
    # The judge of the judge and agreement tasks: an LLM judge (llm:<model>) with a rubric, a reward model or a reward
    # function; see docs/ai-feedback.md.
    judge: JudgeTaskConfig = field(default_factory=JudgeTaskConfig)
    # The human-labelled pairs of the agreement task.
    agreement: AgreementConfig = field(default_factory=AgreementConfig)
    # Prompts per generate call (best_of_n: n rows each) and rows per perplexity forward pass.
    batch_size: int = 16
    # Where the models run: auto (cuda when there is a GPU, else cpu), cpu, or cuda (an error without a GPU).
    device: Device = "auto"

    def __post_init__(self) -> None:
        tasks = selected_tasks(self.tasks)
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        generating = any(t in GENERATION_TASKS for t in tasks)
        require(
            not generating or self.generation.mode != "best_of_n" or bool(self.generation.select_by),
            "generation.select_by",
            "is empty: generation.mode=best_of_n needs a reward model ([{name: 'model:runs/reward-tiny/final'}]) or "
            "a reward function ([{name: math_correct}]) to pick the best of n",
        )
        require(
            not any(t in JUDGE_TASKS for t in tasks) or bool(self.judge.name.strip()),
            "judge.name",
            "is empty: the judge and agreement tasks need a judge (judge.name=llm:<model> with judge.rubric, a reward "
            "model model:runs/reward-tiny/final, or a reward function)",
        )
        require(
            "win_rate" not in tasks or bool(self.win_rate.judge.strip()),
            "win_rate.judge",
            "is empty: the win_rate task needs a reward model to score both sides "
            "(win_rate.judge=model:runs/reward-tiny/final) or a reward function",
        )


def check_config(config: EvalConfig) -> None:
    """What the config's own checks cannot see, before anything is loaded: the models are causal LMs, the device
    exists, and output_dir is free and writable."""
    check_causal_lm(config.model.path, "model.path")
    tasks = selected_tasks(config.tasks)
    if "win_rate" in tasks and config.win_rate.opponent != REFERENCE:
        check_causal_lm(config.win_rate.opponent, "win_rate.opponent")
    if any(t in JUDGE_TASKS for t in tasks):
        check_judge(config.judge)
    if "judge" in tasks and config.judge.opponent != REFERENCE:
        check_causal_lm(config.judge.opponent, "judge.opponent")
    resolve_device(config.device)
    output_dir = Path(config.output_dir)
    prepare_output_dir(output_dir, None)  # refuses a directory that already holds a run
    check_room_for_checkpoints(output_dir, 0)  # writable, with room for the (small) result files


def run(config: EvalConfig) -> EvalResult:
    started = time.perf_counter()
    if not config.output_dir:
        config.output_dir = f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}"
    check_config(config)
    tasks = selected_tasks(config.tasks)
    # lm-eval is installed and knows every lm_eval:<task> before anything else loads.
    lm_plan = plan_lm_eval(tasks, config.lm_eval, config.model)
    own = [t for t in tasks if not is_lm_eval_task(t)]
    gen, data = config.generation, config.data
    generating = any(t in GENERATION_TASKS for t in own)
    # Every named reward function and reward model loads before the evaluated model, so a wrong name fails first.
    select_by = load_reward_sources(gen.select_by) if generating and gen.mode == "best_of_n" else []
    checker = load_source(config.exact_match.checker) if "exact_match" in tasks else None
    judge = load_source(config.win_rate.judge) if "win_rate" in tasks else None

    prompts, generations, opponent, results = [], None, None, {}
    judge_opponent = None
    device = resolve_device(config.device)
    # agreement judges human-labelled pairs: it needs the judge, not the evaluated model.
    evaluating = [t for t in own if t != "agreement"]
    if evaluating:
        tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
        rows = load_eval_rows(data, config.seed)
        # Chat rows are split at their last assistant turn for generation; perplexity scores them whole.
        split = generation_rows(rows, data) if generating else rows
        prompts = build_prompts(split, data, tokenizer) if generating else []
        references = reference_answers(split, data) if checker else []
        opponent = prepare_opponent(config.win_rate.opponent, split, data, config.model) if judge else None
        if "judge" in tasks and judge_is_pairwise(config.judge):
            judge_opponent = prepare_opponent(config.judge.opponent, split, data, config.model)
        if "perplexity" in tasks:
            examples, stats = tokenize_rows(rows, sft_data_config(data), tokenizer)
        say(f"data: {len(rows)} rows from {rows.source}; tasks: {', '.join(evaluating)}")

    from accelerate.utils import set_seed

    set_seed(config.seed)
    if evaluating:
        model = load_eval_model(config.model, device)
        paths = fast_paths_of(model)
        say(f"model: {config.model.path} on {device}; {paths.summary()}")
        if generating:
            say(f"generating: {len(prompts)} prompts, {gen.mode}, up to {gen.max_new_tokens} new tokens")
            generations = generate(model, tokenizer, prompts, gen, config.batch_size, select_by)
        if checker is not None and generations is not None:
            results["exact_match"] = exact_match(prompts, generations, references, checker)
        if "perplexity" in tasks:
            results["perplexity"] = perplexity(model, examples, stats, tokenizer.pad_token_id, config.batch_size)
        del model  # one model in memory at a time: an opponent model, or lm-eval's, may load next
    if judge is not None and opponent is not None and generations is not None:
        if opponent.is_model:
            say(f"opponent: {opponent.path}, generating with the same settings")
        theirs = opponent_completions(opponent, config.model, device, gen, config.batch_size, select_by, say)
        results["win_rate"] = win_rate(prompts, generations.completions, theirs, judge, config.win_rate.tie_margin)
    if any(t in JUDGE_TASKS for t in own):
        judged_against = None
        if judge_opponent is not None and generations is not None:
            judged_against = opponent_completions(
                judge_opponent, config.model, device, gen, config.batch_size, select_by, say
            )
        say(f"judge: {config.judge.name}" + (f" with rubric {config.judge.rubric}" if config.judge.is_llm else ""))
        the_judge = load_judge(config.judge, device)
        if "judge" in own and generations is not None:
            columns = prompt_columns(prompts)
            # A rubric's {reference} is the row's reference answer unless the data has a column of that name.
            columns.setdefault("reference", columns.get("answer", [None] * len(prompts)))
            results["judge"] = judge_task(
                the_judge,
                [p.prompt for p in prompts],
                generations.completions,
                columns,
                judged_against,
                judge_is_pairwise(config.judge),
            )
        if "agreement" in own:
            results["agreement"] = agreement_task(the_judge, config.agreement, config.seed)
        del the_judge
    if evaluating:
        # config.yaml records the evaluated model's paths; the opponent (loaded above) took the switches as given.
        config.model.fast_paths = paths.resolved(config.model.fast_paths)
    lm_run = None
    if lm_plan is not None:
        say(f"lm-eval: {', '.join(lm_plan.names)} on {config.model.path} (lm-eval's HFLM) on {device}")
        lm_run = run_lm_eval(lm_plan, config.lm_eval, config.model, device, config.batch_size, config.seed)
    # In the order asked for; lm-eval's tasks (a group stands for its tasks too) where the first was named.
    ordered = {}
    for name in tasks:
        if not is_lm_eval_task(name):
            ordered[name] = results[name]
        elif lm_run is not None:
            ordered.update(lm_run.results)
    seconds = time.perf_counter() - started
    done = write_results(Path(config.output_dir), config, ordered, prompts, generations, seconds, lm_run)
    say("results: " + ", ".join(f"{k} {v:.4g}" for k, v in done.metrics.items() if v is not None))
    say(f"done in {seconds:.1f} s; run directory {done.output_dir}")
    return done


def main(argv: list[str] | None = None) -> EvalResult:
    return run(parse_args(EvalConfig, argv, "eval", __doc__))


if __name__ == "__main__":
    run_command(main)
