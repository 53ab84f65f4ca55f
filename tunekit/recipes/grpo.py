"""Group-relative policy optimisation with verifiable reward functions and reward models.

    python -m tunekit.recipes.sft --config recipes/sft/tiny-warmstart.yaml   # the warm start the default uses
    python -m tunekit.recipes.grpo                                       # tiny model, generated arithmetic prompts
    python -m tunekit.recipes.grpo --config recipes/grpo/gsm8k-llama-lora.yaml   # a real model on GSM8K

Each optimizer step samples G completions for each prompt of the step (KV-cached, batched generation), scores
them with the configured reward sources, turns rewards into group-relative advantages, and optimises the clipped
surrogate (optionally with a KL penalty to the reference) for ``loss.passes`` optimizer steps on those rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunekit.data.mixing import by_source_metrics
from tunekit.data.prompts import PromptDataConfig, collate_prompts
from tunekit.errors import require
from tunekit.models.adapters import AdapterConfig, check_adapter_use, trained_summary
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.models.policy import build_policy
from tunekit.models.reference import ReferencePolicy
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
from tunekit.rl.grpo import GRPOLossConfig, GRPOTrainer
from tunekit.rl.rewards import RewardSource, load_reward_sources
from tunekit.rl.rollout import SamplingConfig
from tunekit.rl.tool_rollout import check_tool_rewards, setup_tool_use
from tunekit.tools.registry import ToolsConfig
from tunekit.train.card import RecipeCard
from tunekit.train.runner import RunResult, train
from tunekit.train.spec import TrainConfig

HOW_TO_PREPARE = (
    "the default GRPO config starts from the SFT warm start that `python -m tunekit.recipes.sft --config "
    "recipes/sft/tiny-warmstart.yaml` writes; run that first, or set model.path"
)


# The default is sized to show what GRPO does to the held-out task within a couple of minutes on two CPU cores: 16
# prompts a step and every weight of the tiny model trained, because fewer prompts or a LoRA adapter move the
# policy too little to see in 150 steps (docs/results.md).
def _grpo_train() -> TrainConfig:
    return TrainConfig(lr=2e-4, epochs=1, micro_batch_size=16, eval_every=25, warmup_ratio=0.0, scheduler="constant")


def _grpo_data() -> PromptDataConfig:
    return PromptDataConfig(synthetic_size=2400)


def _grpo_sampling() -> SamplingConfig:
    return SamplingConfig(num_generations=8, max_new_tokens=16, temperature=1.0)


def _default_rewards() -> list[RewardSource]:
    return [RewardSource(name="math_correct", weight=1.0)]


def _warm_model() -> ModelConfig:
    # The SFT run that recipes/sft/tiny-warmstart.yaml writes: GRPO needs a policy that already answers in format.
    return ModelConfig(path="runs/sft-warmstart/final", adapter=AdapterConfig(method="full"))


@dataclass
class GRPOConfig(RLRecipeConfig):
    model: ModelConfig = field(default_factory=_warm_model)
    data: PromptDataConfig = field(default_factory=_grpo_data)
    sampling: SamplingConfig = field(default_factory=_grpo_sampling)
    # Reward sources whose weighted sum scores each completion: built-in or own reward functions, or a reward model
    # (model:<dir>); see docs/rewards.md.
    rewards: list[RewardSource] = field(default_factory=_default_rewards)
    loss: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    train: TrainConfig = field(default_factory=_grpo_train)
    # Tools the policy may call during rollouts (multi-turn, sandboxed; docs/tools.md). tools.use empty: none.
    tools: ToolsConfig = field(default_factory=ToolsConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.sampling.num_generations
        require(
            n >= 2, "sampling.num_generations", f"must be at least 2, got {n}: GRPO compares completions in a group"
        )
        require(bool(self.rewards), "rewards", "is empty; name at least one reward source (e.g. math_correct)")


def check_config(config: GRPOConfig) -> None:
    """Refuse, before anything loads, a model path that does not exist or an adapter the recipe cannot use."""
    check_prepared_path("model.path", config.model.path, HOW_TO_PREPARE)
    check_adapter_use(config.model, left_padding=True, earlier="continue")


def run(config: GRPOConfig) -> RunResult:
    check_config(config)
    rewards = load_reward_sources(config.rewards)
    output_dir, resume_from = start_run(config)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code, config.model.revision)
    generate, tool_schemas = setup_tool_use(config.tools, rewards, config.data, tokenizer)
    inputs = load_rl_inputs(config, tokenizer, rewards, output_dir, resume_from, tool_schemas)
    if generate is not None:
        check_tool_rewards(rewards, inputs.prompts)
    model = build_policy(config.model, reference_adapter=config.loss.kl_beta > 0)
    reference = ReferencePolicy.for_policy(model) if config.loss.kl_beta > 0 else None
    use_fast_paths(model, config, generates=True, reference=reference)
    say(f"policy: {config.model.path}, {trained_summary(model)}")
    trainer = GRPOTrainer(
        config.loss,
        config.sampling,
        seed=config.seed,
        eval_batch_size=config.train.micro_batch_size,
        tokenizer=tokenizer,
        reference=reference,
        rewards=rewards,
        samples=inputs.samples,
        task=inputs.task,
        generate=generate,
    )
    spec = run_spec(
        config,
        output_dir,
        resume_from,
        card=RecipeCard("grpo", __doc__ or "grpo", [inputs.summary]),
        items=inputs.prompts,
        collate=collate_prompts,
        # A mixture's held-out prompts are scored per source too (eval/<source>/reward...), at twice the cost.
        evaluate=by_source_metrics(trainer.evaluate, inputs.held_out) if inputs.held_out else None,
        save_final=final_saver(tokenizer),
        prepare=trainer.prepare,
        passes_per_batch=config.loss.passes,
        state=trainer,
    )
    result = train(spec, model, trainer.step)
    say_held_out_outcome(result.history, ["reward", *([inputs.task.key] if inputs.task else [])])
    say(f"done: {result.step} steps; run directory {output_dir}")
    return result


def main(argv: list[str] | None = None) -> RunResult:
    return run(parse_args(GRPOConfig, argv, "grpo", __doc__))


if __name__ == "__main__":
    run_command(main)
