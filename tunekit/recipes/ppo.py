"""PPO (RLHF) with the actor, critic, reference and reward model sharing one copy of the base weights.

    python -m tunekit.recipes.sft --config recipes/sft/tiny-warmstart.yaml          # the SFT warm start
    python -m tunekit.recipes.reward --config recipes/reward/tiny-warmstart.yaml    # the reward model, on it
    python -m tunekit.recipes.ppo                                                   # tiny model, offline

Each runner step samples completions for a batch of prompts, scores them (reward model and/or reward functions),
shapes per-token rewards with a KL penalty to the reference, estimates advantages with GAE, and then takes
``ppo.epochs x ppo.minibatches`` optimizer steps on that experience. See docs/ppo.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tunekit.data.prompts import PromptDataConfig, collate_prompts, load_prompts
from tunekit.errors import ConfigError
from tunekit.models.adapters import check_adapter_use
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.models.policy import build_policy
from tunekit.recipes.common import (
    RLRecipeConfig,
    final_saver,
    parse_args,
    run_command,
    run_spec,
    say,
    say_held_out_outcome,
    start_run,
    use_fast_paths,
)
from tunekit.rl.ppo import PPOLossConfig, PPOTrainer
from tunekit.rl.rewards import RewardSource, check_reward_columns, load_reward_function
from tunekit.rl.roles import CriticConfig, SharedRoles, check_reward_model, check_shared_adapter
from tunekit.rl.rollout import SamplingConfig
from tunekit.rl.samples import SampleLog
from tunekit.rl.task import load_task_metric
from tunekit.train.checkpoint import checkpoint_state
from tunekit.train.runner import RunResult, train
from tunekit.train.spec import TrainConfig

WARM_START = "runs/sft-warmstart/final"
DEFAULT_REWARD_MODEL = "runs/reward-warmstart/final"
HOW_TO_PREPARE = (
    "the default PPO config starts from the SFT warm start that `python -m tunekit.recipes.sft --config "
    "recipes/sft/tiny-warmstart.yaml` writes and scores with the reward model that `python -m "
    "tunekit.recipes.reward --config recipes/reward/tiny-warmstart.yaml` trains on it; run those first, or set "
    "model.path and reward_model"
)


# lr 2e-4: at 1e-3 the policy drifted within 100 steps (held-out greedy exact match 0.475 -> 0.275, with or without
# the checker beside the reward model); docs/results.md has the runs.
def _ppo_train() -> TrainConfig:
    return TrainConfig(lr=2e-4, epochs=1, micro_batch_size=16, eval_every=10, warmup_ratio=0.0, scheduler="constant")


def _default_rewards() -> list[RewardSource]:
    # A verifiable checker beside the reward model: a learned score alone is what a policy learns to fool (the tiny
    # reward model spots a wrong final number, not wrong working). Weight 5 is about the reward model's spread
    # between right and wrong answers, so neither signal drowns the other.
    return [RewardSource(name="math_correct", weight=5.0)]


def _ppo_sampling() -> SamplingConfig:
    return SamplingConfig(num_generations=1, max_new_tokens=16, temperature=1.0)


@dataclass
class PPOConfig(RLRecipeConfig):
    model: ModelConfig = field(default_factory=lambda: ModelConfig(path=WARM_START))
    # A reward run's final/ (LoRA adapter + score head) trained on the policy's base; shared, not copied.
    # null: rewards come from the reward functions alone.
    reward_model: str | None = DEFAULT_REWARD_MODEL
    # Reward functions added to the reward model's score (as in GRPO); [] for the reward model alone.
    rewards: list[RewardSource] = field(default_factory=_default_rewards)
    critic: CriticConfig = field(default_factory=CriticConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    sampling: SamplingConfig = field(default_factory=_ppo_sampling)
    ppo: PPOLossConfig = field(default_factory=PPOLossConfig)
    train: TrainConfig = field(default_factory=_ppo_train)


def check_config(config: PPOConfig) -> None:
    """Refuse what cannot run, naming the key, before anything is loaded or written."""
    ppo = config.ppo
    rollouts = config.train.micro_batch_size * config.train.grad_accum_steps * config.sampling.num_generations
    if ppo.minibatches > rollouts:
        raise ConfigError(
            f"ppo.minibatches={ppo.minibatches} is more than the {rollouts} completions of a rollout batch "
            "(train.micro_batch_size x train.grad_accum_steps x sampling.num_generations)"
        )
    if config.reward_model is None and not config.rewards:
        raise ConfigError("PPO needs a reward: set reward_model (a reward run's final/) or rewards (functions)")
    check_shared_adapter(config.model)
    check_adapter_use(config.model, left_padding=True, earlier="continue")
    for key, path in (("model.path", config.model.path), ("reward_model", config.reward_model)):
        if path is not None and path.startswith(("runs/", "./", "../", "/")) and not Path(path).exists():
            raise ConfigError(f"{key} {path!r} does not exist; {HOW_TO_PREPARE}")
    if config.reward_model is not None:
        check_reward_model(config.reward_model, config.model.path)


def run(config: PPOConfig) -> RunResult:
    check_config(config)
    reward_functions = [(source, load_reward_function(source.name)) for source in config.rewards]
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    prompts, eval_prompts = load_prompts(config.data, tokenizer, config.seed)
    check_reward_columns(reward_functions, list(prompts[0].columns))
    task = load_task_metric(config.task_metric, eval_prompts)
    say(f"data: {len(prompts)} prompts, {len(eval_prompts)} held out; task metric: {task.name if task else 'none'}")
    model = build_policy(config.model, reference_adapter=True)
    roles = SharedRoles(model, config.critic, config.reward_model)
    use_fast_paths(model, config, generates=True)
    say(roles.describe(model))
    resume_step = checkpoint_state(resume_from)["step"] if resume_from else None
    samples = SampleLog(output_dir / "samples.jsonl", config.sample_every, resume_step)
    trainer = PPOTrainer(
        config.ppo,
        config.sampling,
        seed=config.seed,
        eval_batch_size=config.train.micro_batch_size,
        tokenizer=tokenizer,
        roles=roles,
        reward_sources=reward_functions,
        samples=samples,
        task=task,
    )
    spec = run_spec(
        config,
        output_dir,
        resume_from,
        items=prompts,
        collate=collate_prompts,
        evaluate=partial(trainer.evaluate, prompts=eval_prompts) if eval_prompts else None,
        save_final=final_saver(tokenizer),
        prepare=trainer.prepare,
        select=trainer.select,
        passes_per_batch=config.ppo.epochs * config.ppo.minibatches,
        state=trainer,
    )
    result = train(spec, model, trainer.step)
    say_held_out_outcome(result.history, ["reward", "kl", *([task.key] if task else [])])
    say(f"(KL to the reference in nats per completion; target {config.ppo.kl.target})")
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(PPOConfig, argv, "ppo", __doc__))


if __name__ == "__main__":
    run_command(main)
