"""What every recipe shares: the common config keys, command-line parsing, seeding and saving final/."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from tunekit.config import all_keys, load_config
from tunekit.data.prompts import PromptExample, load_prompts
from tunekit.errors import ConfigError, exit_on_user_error, require
from tunekit.fast import FastPaths, enable_fast_paths
from tunekit.models.load import ModelConfig
from tunekit.models.reference import ReferencePolicy
from tunekit.rl.reward_calls import check_reward_rows
from tunekit.rl.samples import SampleLog
from tunekit.rl.task import TaskMetric, load_task_metric
from tunekit.train.card import RecipeCard, with_model_card
from tunekit.train.checkpoint import checkpoint_state
from tunekit.train.engines import leave_process_group
from tunekit.train.rundir import prepare_output_dir
from tunekit.train.spec import RunSpec, TrainConfig

C = TypeVar("C")
R = TypeVar("R")


@dataclass
class RecipeConfig:
    # Where the run directory goes; default runs/<recipe>-<date>-<time>.
    output_dir: str | None = None
    # Seeds Python, NumPy and torch (adapter initialisation, sampling), the data order, the held-out split and the
    # generated data.
    seed: int = 0
    # A cap on optimizer steps (null: run all epochs).
    max_steps: int | None = None
    # "auto" continues from the newest complete checkpoint in output_dir; or a checkpoint directory.
    resume: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        steps = self.max_steps
        require(steps is None or steps >= 1, "max_steps", f"must be at least 1 or null (no cap), got {steps}")
        # train.compile is one of the fast paths (tunekit/fast/compiled.py); a plain run compiles nothing.
        require(
            not (self.train.compile and not self.model.fast_paths.enabled),
            "train.compile",
            "needs model.fast_paths.enabled=true (a plain run compiles nothing)",
        )


@dataclass
class RLRecipeConfig(RecipeConfig):
    """The keys the RL recipes (GRPO, PPO) share."""

    # The checker held-out evaluations score beside the reward, as eval/task/<name> (docs/rewards.md): auto
    # (math_correct when the held-out rows have an answer column), a reward-function name, or null (none).
    task_metric: str | None = "auto"
    # Write prompts, completions and their scores to samples.jsonl at the steps that fall on a multiple of this
    # (0: never).
    sample_every: int = 10


def parse_args(cls: type[C], argv: list[str] | None, recipe: str, doc: str | None = None) -> C:
    """``[--config FILE] [key.sub=value ...]`` -> a config of ``cls``; ``--help`` lists every key."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print((doc or "").strip() + "\n")
        print(f"usage: python -m tunekit.recipes.{recipe} [--config FILE.yaml] [key.sub=value ...]\n\nkeys:")
        for key in all_keys(cls):
            print(f"  {key}")
        raise SystemExit(0)
    config_path = None
    overrides = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args):
                from tunekit.errors import ConfigError

                raise ConfigError("--config needs a file path")
            config_path = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        else:
            overrides.append(arg[2:] if arg.startswith("--") else arg)
        i += 1
    config = load_config(cls, config_path, overrides)
    if getattr(config, "output_dir", "") is None:
        config.output_dir = f"runs/{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"  # type: ignore[attr-defined]
    return config


def run_command(main: Callable[[], R]) -> R:
    """A recipe run as a process (``python -m tunekit.recipes.<name>``, one per rank under a launcher).

    A user's mistake exits with code 2 and one message (see :func:`exit_on_user_error`); a finished run leaves
    its process group before the interpreter shuts down (see :func:`leave_process_group`). The libraries' own
    chatter stays off the terminal unless ``TUNEKIT_VERBOSE=1`` (see :func:`quiet_dependencies`).
    """
    quiet_dependencies()
    result = exit_on_user_error(main)
    leave_process_group()
    return result


def quiet_dependencies() -> None:
    """Keep what the libraries print on their own off a run's terminal: transformers' weight-loading bars and
    notices, its deprecation warnings about calls tunekit does not make itself, DeepSpeed's accelerator probe, and
    bitsandbytes' notice (on CPUs with AVX512-BF16) that it could not fetch a 4-bit CPU kernel, printed when it is
    imported even where nothing is quantised. Their errors still show; ``TUNEKIT_VERBOSE=1`` shows everything."""
    if os.environ.get("TUNEKIT_VERBOSE", "0") not in ("", "0"):
        return
    import logging
    import warnings

    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    # DeepSpeed sets its logger's level when it is imported, after this runs; a filter stays.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)
    # bitsandbytes' modules log through children of this logger and leave their own levels unset.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def start_run(config: RecipeConfig) -> tuple[Path, Path | None]:
    """Check output_dir and seed everything, before any model or data is loaded.

    Returns the run directory and the checkpoint to resume from (None for a fresh run).
    """
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir or ".")
    resume_from = prepare_output_dir(output_dir, config.resume, warn=say)
    set_seed(config.seed)
    return output_dir, resume_from


def final_saver(tokenizer: Any):
    """A ``save_final(model, dir)`` that writes Hugging Face files (adapter or full weights) plus the tokenizer."""

    def save(model: torch.nn.Module, directory: Path, state_dict: dict | None = None) -> None:
        # state_dict: the gathered weights when an engine (FSDP, ZeRO-3) shards the model's own.
        if getattr(model, "peft_config", None):
            # Only the trained adapter: a frozen reference twin (see models/reference.py) is not part of the result.
            model.save_pretrained(directory, selected_adapters=[model.active_adapter], state_dict=state_dict)
        else:
            model.save_pretrained(directory, state_dict=state_dict)
        tokenizer.save_pretrained(directory)

    return save


def say(message: str) -> None:
    """Progress notes for the person at the terminal (main process only)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def run_spec(
    config: RecipeConfig, output_dir: Path, resume_from: Path | None, card: RecipeCard | None = None, **fields: Any
) -> RunSpec:
    """A RunSpec carrying the keys every recipe shares; ``fields`` add the recipe's items, collate, etc. With a
    ``card`` (what the recipe knows of its run), final/ is saved with its model card, final/README.md."""
    if card is not None and fields.get("save_final") is not None:
        fields["save_final"] = with_model_card(fields["save_final"], card, config, output_dir)
    return RunSpec(
        output_dir=output_dir,
        config=config,
        train=config.train,
        seed=config.seed,
        max_steps=config.max_steps,
        resume_from=resume_from,
        **fields,
    )


def use_fast_paths(
    model: torch.nn.Module, config: RecipeConfig, generates: bool = False, reference: ReferencePolicy | None = None
) -> FastPaths:
    """Turn on the fast paths ``config.model.fast_paths`` allows on the prepared ``model`` (``generates``: the
    recipe samples from it), say which, and record them in the config that config.yaml will hold (a path that did
    not turn on is written as false). A ``reference`` that keeps a frozen copy of the policy (full fine-tuning)
    gets the same paths, uncompiled: it only runs without gradients."""
    if reference is not None and reference.frozen is not None:
        enable_fast_paths(reference.frozen, config.model.fast_paths, generates=False)
    paths = enable_fast_paths(model, config.model.fast_paths, compile=config.train.compile, generates=generates)
    config.model.fast_paths = paths.resolved(config.model.fast_paths)
    say(paths.summary())
    return paths


def check_prepared_path(key: str, path: str | None, how: str) -> None:
    """Refuse a ``path`` written as a local path (runs/..., ./, ../, /) that does not exist, saying ``how`` to make
    it; hub ids are left to the loader."""
    if path is not None and path.startswith(("runs/", "./", "../", "/")) and not Path(path).exists():
        raise ConfigError(f"{key} {path!r} does not exist; {how}")


@dataclass
class RLInputs:
    """What the RL recipes (GRPO, PPO) read before their model: prompts, the held-out task metric, the sample log."""

    prompts: list[PromptExample]
    held_out: list[PromptExample]
    task: TaskMetric | None
    samples: SampleLog
    summary: str = ""  # the data line printed, for the model card


def load_rl_inputs(
    config: Any,
    tokenizer: Any,
    rewards: list,
    output_dir: Path,
    resume_from: Path | None,
    tools: list[dict[str, Any]] | None = None,
) -> RLInputs:
    """``config`` (an RL recipe's: ``data``, ``sampling``, ``task_metric``, ``sample_every``) -> its prompts, with the
    reward functions' columns checked against them, the task metric and the samples.jsonl log (resumed runs drop
    the lines past their checkpoint). ``tools``: the JSON schemas the chat prompts show (a run with tools)."""
    read = load_prompts(config.data, tokenizer, config.seed, tools)
    prompts, held_out = read.train, read.held_out
    check_reward_rows(rewards, [*prompts, *held_out])
    task = load_task_metric(config.task_metric, held_out)
    for line in read.lines:  # one per source of a mixture, and the draw
        say(line)
    summary = (
        f"data: {len(prompts)} prompts, {len(held_out)} held out, {read.empty_dropped} dropped as empty; "
        f"{config.sampling.num_generations} completions each; task metric: {task.name if task else 'none'}"
    )
    say(summary)
    resume_step = checkpoint_state(resume_from)["step"] if resume_from else None
    samples = SampleLog(output_dir / "samples.jsonl", config.sample_every, resume_step)
    return RLInputs(prompts, held_out, task, samples, summary)


def say_held_out_outcome(history: list[dict[str, Any]], keys: list[str]) -> None:
    """Print each held-out ``eval/`` key's first and last value, sampled and greedy: a run's closing summary."""
    for key in keys:
        for prefix, label in (("eval/", "sampled"), ("eval/greedy/", "greedy")):
            seen = [r[prefix + key] for r in history if prefix + key in r]
            if seen:
                say(f"held-out {key} ({label}): {seen[0]:.3f} at the first evaluation, {seen[-1]:.3f} at the end")
