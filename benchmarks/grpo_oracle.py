"""Outcome oracle for GRPO: tunekit's recipe and TRL's GRPOTrainer on one setup, judged by one evaluator.

    python benchmarks/grpo_oracle.py                                   # the recipe's default config
    python benchmarks/grpo_oracle.py --config recipes/grpo/tiny.yaml max_steps=40 --json oracle.json
    python benchmarks/grpo_oracle.py --smoke                           # seconds: the test suite's version

The config is built exactly as ``python -m tunekit.recipes.grpo`` builds it (``--config`` plus trailing
``key=value`` overrides). tunekit trains with it into ``<out>/tunekit``; TRL trains on the same warm start, prompts
(same ids, same order per step), rewards and hyperparameters, for as many optimizer steps, into ``<out>/trl``
(see oracle_trl.py for the mapping and for what cannot be aligned). Then one evaluator
(policy_eval.py: plain transformers ``generate``, never tunekit's decoding) scores the warm start and both final
policies on the config's held-out prompts: accuracy of K samples per prompt and of the greedy answer, by the task
checker (``math_correct``). If tunekit's GRPO is right, its held-out outcome should match TRL's within noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# This checkout's tunekit, whatever else is installed: the benchmark measures the code beside it.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import oracle_trl  # noqa: E402
from policy_eval import Decoding, evaluate_policy, load_policy  # noqa: E402
from report import machine, versions  # noqa: E402

WARM_START_COMMAND = "python -m tunekit.recipes.sft --config recipes/sft/tiny-warmstart.yaml"
# Seconds, not minutes: two optimizer steps on 16 prompts, short completions, four held-out prompts.
SMOKE = [
    "max_steps=2",
    # The step's shape is pinned, so that two steps stay two whatever the recipe's defaults become.
    "train.micro_batch_size=4",
    "train.grad_accum_steps=1",
    "train.epochs=1",
    "loss.passes=1",
    "data.synthetic_size=16",
    "data.eval_fraction=0.25",
    "sampling.num_generations=4",
    "sampling.max_new_tokens=6",
    "train.eval_every=0",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a GRPO recipe YAML (default: the recipe's built-in config)")
    parser.add_argument("--out", default="runs/grpo-oracle", help="run directories go to OUT/tunekit and OUT/trl")
    parser.add_argument("--eval-prompts", type=int, help="score the first N held-out prompts (default: all)")
    parser.add_argument("--samples", type=int, help="samples per prompt (default: sampling.num_generations)")
    parser.add_argument(
        "--checker",
        help="reward function that scores 1.0 for a correct answer (default: the config's task_metric, "
        "and math_correct where that is auto)",
    )
    parser.add_argument(
        "--skip-tunekit", action="store_true", help="scores OUT/tunekit/final if an earlier run left it"
    )
    parser.add_argument("--skip-trl", action="store_true", help="scores OUT/trl/final if an earlier run left it")
    parser.add_argument("--smoke", action="store_true", help=f"prepend {' '.join(SMOKE)}; 4 prompts, 2 samples")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, as the recipe takes them")
    args = parser.parse_intermixed_args(argv)
    if args.smoke:
        args.overrides = [*SMOKE, *args.overrides]
        args.eval_prompts = args.eval_prompts or 4
        args.samples = args.samples or 2
    return args


def build_config(args: argparse.Namespace) -> Any:
    """The recipe's config, as ``python -m tunekit.recipes.grpo`` would build it, writing to OUT/tunekit."""
    from tunekit.config import load_config
    from tunekit.recipes.grpo import GRPOConfig

    out = Path(args.out) / "tunekit"
    return load_config(GRPOConfig, args.config, [*args.overrides, f"output_dir={out}", "train.progress=false"])


def warm_start(config: Any) -> Path:
    """model.path as a local directory, or exit with the command that makes the default one."""
    from tunekit.models.load import resolve_model_path

    path = Path(resolve_model_path(config.model.path))
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        print(f"warm start {config.model.path!r} not found; make it with:\n  {WARM_START_COMMAND}", file=sys.stderr)
        raise SystemExit(2)
    return path.resolve()


@contextmanager
def watching_tunekit(record: dict[str, Any]):
    """Record the prompt ids of every set of rollouts tunekit's GRPO prepares, the seconds spent in the runner, and
    those in its own held-out evaluations (which TRL does not do), by wrapping three functions for this run only."""
    import tunekit.recipes.grpo as recipe
    from tunekit.rl.grpo import GRPOTrainer

    prepare, evaluate, runner = GRPOTrainer.prepare, GRPOTrainer.evaluate, recipe.train
    record.update(prompt_ids=[], eval_s=0.0)

    def timed_runner(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return runner(*args, **kwargs)
        finally:
            record["runner_s"] = time.perf_counter() - started

    def watched_prepare(self: Any, model: Any, batches: list, step: int) -> Any:
        record["prompt_ids"].append([list(p.prompt_ids) for b in batches for p in b["prompts"]])
        return prepare(self, model, batches, step)

    def watched_evaluate(self: Any, model: Any, prompts: list) -> Any:
        started = time.perf_counter()
        try:
            return evaluate(self, model, prompts)
        finally:
            record["eval_s"] += time.perf_counter() - started

    GRPOTrainer.prepare, GRPOTrainer.evaluate, recipe.train = watched_prepare, watched_evaluate, timed_runner
    try:
        yield
    finally:
        GRPOTrainer.prepare, GRPOTrainer.evaluate, recipe.train = prepare, evaluate, runner


def import_everything() -> None:
    """Import what either side imports lazily, so that neither side's wall time pays for the other's imports."""
    import matplotlib.pyplot  # noqa: F401  (tunekit draws its charts at the end of a run)
    import peft  # noqa: F401
    import trl  # noqa: F401
    from datasets import Dataset  # noqa: F401
    from trl import GRPOTrainer  # noqa: F401

    import tunekit.plot  # noqa: F401


def run_tunekit(config: Any, train_prompts: list[Any]) -> dict[str, Any]:
    """tunekit's GRPO recipe, its public ``run``; wall time end to end (loading, training, its evaluations, saving)."""
    from tunekit.recipes.grpo import run

    record: dict[str, Any] = {}
    started = time.perf_counter()
    with watching_tunekit(record):
        result = run(config)
    record["wall_s"] = time.perf_counter() - started
    batches = oracle_trl.tunekit_batches(train_prompts, config, result.step)
    record["order_as_reconstructed"] = record["prompt_ids"] == [[list(p.prompt_ids) for p in b] for b in batches]
    record.update(steps=result.step, final=str(Path(config.output_dir) / "final"))
    del record["prompt_ids"]
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tunekit.data.prompts import load_prompts
    from tunekit.models.load import load_tokenizer
    from tunekit.rl.rewards import load_reward_function

    args = parse_args(argv)
    config = build_config(args)
    start = warm_start(config)
    oracle_trl.check_supported(config)
    out = Path(args.out)
    tokenizer = load_tokenizer(str(start), config.model.trust_remote_code)
    read = load_prompts(config.data, tokenizer, config.seed)
    train_prompts, held_out = read.train, read.held_out
    held_out = held_out[: args.eval_prompts] if args.eval_prompts else held_out
    if not held_out:
        raise SystemExit("the config holds out no prompts (data.eval_fraction, data.eval_path); nothing to score")

    import_everything()
    runs: dict[str, dict[str, Any]] = {}
    steps = oracle_trl.total_steps(config, len(train_prompts))
    if not args.skip_tunekit:
        shutil.rmtree(out / "tunekit", ignore_errors=True)
        runs["tunekit"] = run_tunekit(config, train_prompts)
        steps = runs["tunekit"]["steps"]
    elif (out / "tunekit" / "final").is_dir():
        runs["tunekit"] = {"final": str(out / "tunekit" / "final"), "wall_s": None}
    if not args.skip_trl:
        shutil.rmtree(out / "trl", ignore_errors=True)
        runs["trl"] = oracle_trl.run(config, train_prompts, tokenizer, start, steps, out / "trl")
    elif (out / "trl" / "final").is_dir():
        runs["trl"] = {"final": str(out / "trl" / "final"), "wall_s": None}

    sampling = config.sampling
    decoding = Decoding(
        samples=args.samples or sampling.num_generations,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        seed=config.seed,
    )
    configured = getattr(config, "task_metric", None)
    checker_name = args.checker or (configured if configured not in (None, "auto") else "math_correct")
    checker = load_reward_function(checker_name)
    policies: dict[str, dict[str, Any]] = {}
    reference = load_policy(start)
    for name, path in [("warm start", str(start)), *((n, r["final"]) for n, r in runs.items())]:
        score = evaluate_policy(
            path, tokenizer, held_out, checker, decoding, None if name == "warm start" else reference
        )
        policies[name] = {**dataclasses.asdict(score), "path": path, "wall_s": runs.get(name, {}).get("wall_s")}

    results = {
        "setup": setup(config, steps, len(train_prompts), len(held_out), decoding, checker_name),
        "policies": policies,
        "tunekit": {k: v for k, v in runs.get("tunekit", {}).items() if k != "final"},
        "trl": {k: v for k, v in runs.get("trl", {}).items() if k != "final"},
        "unaligned": oracle_trl.unaligned(config),
        "config": dataclasses.asdict(config),
        "machine": machine("cuda" if _cuda() else "cpu"),
        "versions": versions(),
    }
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    # The comparison means nothing unless both sides trained on the same prompts: fail loudly, figures kept above.
    if results["tunekit"].get("order_as_reconstructed") is False:
        raise SystemExit(
            "tunekit's rollouts drew other prompts than the oracle laid out for TRL (runner order changed?)"
        )
    if results["trl"].get("prompt_ids_match") is False:
        raise SystemExit("TRL generated from other prompt ids than tunekit's, or in another order")
    return results


def setup(config: Any, steps: int, n_train: int, n_eval: int, decoding: Decoding, checker: str) -> dict[str, Any]:
    train, loss, sampling = config.train, config.loss, config.sampling
    adapter = config.model.adapter
    return {
        "warm_start": config.model.path,
        "steps": steps,
        "prompts_per_step": train.micro_batch_size * train.grad_accum_steps,
        "num_generations": sampling.num_generations,
        "train_prompts": n_train,
        "lr": train.lr,
        "scheduler": train.scheduler,
        "adapter": adapter.method if adapter.method == "full" else f"{adapter.method} r={adapter.r} a={adapter.alpha}",
        "max_new_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "kl_beta": loss.kl_beta,
        "clip": [loss.clip_low, loss.clip_high],
        "aggregation": loss.aggregation,
        "passes": loss.passes,
        "rewards": [f"{r.weight:g} x {r.name}" for r in config.rewards],
        "eval_prompts": n_eval,
        "eval_samples": decoding.samples,
        "checker": checker,
    }


def print_table(results: dict[str, Any], out: Any = None) -> None:
    """The markdown table, then the setup, the machine and what the two sides could not share."""
    out = out or sys.stdout
    print("\n| policy | sampled accuracy | greedy accuracy | mean completion tokens | train wall time |", file=out)
    print("|---|---|---|---|---|", file=out)
    for name, p in results["policies"].items():
        wall = "-" if p["wall_s"] is None else f"{p['wall_s']:.1f} s"
        print(
            f"| {name} | {p['sampled_accuracy']:.3f} ± {p['sampled_se']:.3f} | {p['greedy_accuracy']:.3f} ± "
            f"{p['greedy_se']:.3f} | {p['mean_completion_tokens']:.1f} | {wall} |",
            file=out,
        )
    drift = [
        f"{n} {p['kl_to_reference']:.4f}" for n, p in results["policies"].items() if p["kl_to_reference"] is not None
    ]
    if drift:
        print(f"\nKL(policy || warm start) per token of the policy's held-out samples: {', '.join(drift)}", file=out)
    s, lead = results["setup"], "" if drift else "\n"
    print(
        f"{lead}setup: {s['steps']} steps x {s['prompts_per_step']} prompts x {s['num_generations']} completions "
        f"({s['train_prompts']} training prompts), lr {s['lr']:g} {s['scheduler']}, {s['adapter']}, max_new_tokens "
        f"{s['max_new_tokens']}, temperature {s['temperature']:g}, kl_beta {s['kl_beta']:g}, clip {s['clip']}, "
        f"aggregation {s['aggregation']}, passes {s['passes']}, rewards {', '.join(s['rewards'])}; scored on "
        f"{s['eval_prompts']} held-out prompts x {s['eval_samples']} samples + greedy by {s['checker']} "
        "(± one standard error over prompts)",
        file=out,
    )
    tunekit, trl = results["tunekit"], results["trl"]
    if tunekit.get("runner_s") is not None:
        print(
            f"wall time: tunekit {tunekit['runner_s']:.1f} s in its runner (training, {tunekit['eval_s']:.1f} s of its "
            f"own held-out evaluations, saving, charts), TRL {trl.get('train_s', float('nan')):.1f} s in "
            "trainer.train(); the rest is loading and saving",
            file=out,
        )
    if "prompt_ids_match" in trl:
        given = " (tunekit's ids handed to TRL)" if trl["tokenization"]["tunekit_ids_given"] else ""
        print(
            f"TRL generated from tunekit's prompt ids in tunekit's order: {trl['prompt_ids_match']}{given}; "
            f"TRL's own tokenization differed on {trl['tokenization']['mismatched']} of "
            f"{trl['tokenization']['checked']} training prompts",
            file=out,
        )
    m, v = results["machine"], results["versions"]
    print(
        f"machine: {m.get('cpu')}, {m.get('cpus')} CPUs{', ' + m['gpu'] if 'gpu' in m else ''}; torch {v['torch']}, "
        f"transformers {v['transformers']}, peft {v['peft']}, trl {v['trl']}, tunekit {v['tunekit_commit']}",
        file=out,
    )
    for note in results["unaligned"]:
        print(f"not aligned: {note}", file=out)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
