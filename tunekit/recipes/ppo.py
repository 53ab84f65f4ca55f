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

from tunekit.data.mixing import by_source_metrics
from tunekit.data.prompts import PromptDataConfig, collate_prompts
from tunekit.errors import require
from tunekit.models.adapters import check_adapter_use
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.models.policy import build_policy
from tunekit.recipes.common import (
    RLRecipeConfig,
    check_prepared_path,
    final_saver,
    load_rl_inputs,
    parse_args,
    run_command,
    run_spec,
    say,
    say_held_out_outcome,
    start_run,
    use_fast_paths,
)
from tunekit.rl.ppo import PPOLossConfig, PPOTrainer
from tunekit.rl.rewards import RewardSource, load_reward_sources
from tunekit.rl.roles import CriticConfig, SharedRoles, check_reward_model, check_shared_adapter
from tunekit.rl.rollout import SamplingConfig
from tunekit.rl.tool_rollout import check_tool_rewards, setup_tool_use
from tunekit.tools.registry import ToolsConfig
from tunekit.train.card import RecipeCard
from tunekit.train.runner import RunResult, train
from tunekit.train.spec import TrainConfig

WARM_START = "runs/sft-warmstart/final"
DEFAULT_REWARD_MODEL = "runs/reward-warmstart/final"
# For the model card: what final/ holds of the four roles.
ACTOR_ONLY = (
    "This folder holds the actor, the policy PPO trained; the critic (its adapter and value head), the reference "
    "and the reward model are not part of it."
)
HOW_TO_PREPARE = (
    "the default PPO config starts from the SFT warm start that `python -m tunekit.recipes.sft --config "
    "recipes/sft/tiny-warmstart.yaml` writes and scores with the reward model that `python -m "
    "tunekit.recipes.reward --config recipes/reward/tiny-warmstart.yaml` trains on it; run those first, or set "
    "model.path and reward_model"
)


# lr 2e-4: faster rates let the policy drift away from the task within the default run (docs/results.md).
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
    # Tools the policy may call during rollouts (multi-turn, sandboxed; docs/tools.md). tools.use empty: none.
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    train: TrainConfig = field(default_factory=_ppo_train)

    def __post_init__(self) -> None:
        super().__post_init__()
        rollouts = self.train.micro_batch_size * self.train.grad_accum_steps * self.sampling.num_generations
        require(
            self.ppo.minibatches <= rollouts,
            "ppo.minibatches",
            f"is {self.ppo.minibatches}, more than the {rollouts} completions of a rollout batch "
            "(train.micro_batch_size x train.grad_accum_steps x sampling.num_generations)",
        )
        require(
            self.reward_model is not None or bool(self.rewards),
            "rewards",
            "is empty and reward_model is unset: PPO needs a reward (a reward run's final/, or reward functions)",
        )


def check_config(config: PPOConfig) -> None:
    """Refuse what cannot run, naming the key, before anything is loaded or written."""
    check_shared_adapter(config.model)
    check_adapter_use(config.model, left_padding=True, earlier="continue")
    check_prepared_path("model.path", config.model.path, HOW_TO_PREPARE)
    check_prepared_path("reward_model", config.reward_model, HOW_TO_PREPARE)
    if config.reward_model is not None:
        check_reward_model(config.reward_model, config.model.path)


def run(config: PPOConfig) -> RunResult:
    check_config(config)
    reward_functions = load_reward_sources(config.rewards)
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    generate, tool_schemas = setup_tool_use(config.tools, reward_functions, config.data, tokenizer)
    inputs = load_rl_inputs(config, tokenizer, reward_functions, output_dir, resume_from, tool_schemas)
    if generate is not None:
        check_tool_rewards(reward_functions, inputs.prompts)
    model = build_policy(config.model, reference_adapter=True)
    roles = SharedRoles(model, config.critic, config.reward_model)
    use_fast_paths(model, config, generates=True)
    say(roles.describe(model))
    trainer = PPOTrainer(
        config.ppo,
        config.sampling,
        seed=config.seed,
        eval_batch_size=config.train.micro_batch_size,
        tokenizer=tokenizer,
        roles=roles,
        reward_sources=reward_functions,
        samples=inputs.samples,
        task=inputs.task,
        generate=generate,
    )
    spec = run_spec(
        config,
        output_dir,
        resume_from,
        card=RecipeCard("ppo", __doc__ or "ppo", [inputs.summary], notes=[ACTOR_ONLY]),
        items=inputs.prompts,
        collate=collate_prompts,
        # A mixture's held-out prompts are scored per source too (eval/<source>/reward...), at twice the cost.
        evaluate=by_source_metrics(trainer.evaluate, inputs.held_out) if inputs.held_out else None,
        save_final=final_saver(tokenizer),
        prepare=trainer.prepare,
        select=trainer.select,
        passes_per_batch=config.ppo.epochs * config.ppo.minibatches,
        state=trainer,
    )
    result = train(spec, model, trainer.step)
    say_held_out_outcome(result.history, ["reward", "kl", *([inputs.task.key] if inputs.task else [])])
    say(f"(KL to the reference in nats per completion; target {config.ppo.kl.target})")
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(PPOConfig, argv, "ppo", __doc__))


if __name__ == "__main__":
    run_command(main)
