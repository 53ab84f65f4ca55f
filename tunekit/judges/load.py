"""A judge from its config section: a reward function, a reward model or an LLM judge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tunekit.errors import require

# An LLM judge is named "llm:<model>"; anything else is a reward function or "model:<reward run>".
LLM_PREFIX = "llm:"


@dataclass
class JudgeConfig:
    # Who judges: an LLM, llm:<model> (a hub id, a local directory, an adapter run's final/ or an embedded model such
    # as tiny-llama), prompted with rubric; or a reward function or reward model named as rewards are (math_correct,
    # file.py:function, model:runs/reward-tiny/final).
    name: str = ""
    # LLM judges: a shipped rubric (helpfulness, harmlessness, correctness, helpfulness-score) or a rubric YAML file
    # (see docs/ai-feedback.md).
    rubric: str = "helpfulness"
    # LLM judges: write reasoning first (greedy, up to max_reasoning_tokens), then give the verdict.
    reasoning: bool = False
    # LLM judges: the longest reasoning, in tokens.
    max_reasoning_tokens: int = 256
    # Pairwise LLM judges: ask every pair in both orders and average the two verdicts (cancelling position bias); the
    # share of pairs on which the orders agree is reported either way.
    both_orders: bool = True
    # LLM judges: judgements per forward pass.
    batch_size: int = 8
    # LLM judges: dtype of the judge's weights (bf16 halves its memory on a GPU).
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Reward functions: the function's own options.
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(
            self.max_reasoning_tokens >= 1,
            "max_reasoning_tokens",
            f"must be at least 1, got {self.max_reasoning_tokens}",
        )
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")

    @property
    def is_llm(self) -> bool:
        return self.name.startswith(LLM_PREFIX)


def check_judge(config: JudgeConfig, key: str = "judge") -> None:
    """What can be checked before any model loads: a name is given, a reward function exists, a rubric parses."""
    from tunekit.errors import ConfigError
    from tunekit.judges.rubric import load_rubric
    from tunekit.rl.rewards import load_reward_function

    if not config.name.strip():
        raise ConfigError(
            f"{key}.name is empty: name an LLM judge (llm:<model>), a reward function (math_correct) or a reward "
            "model (model:runs/reward-tiny/final)"
        )
    if config.is_llm:
        if not config.name[len(LLM_PREFIX) :].strip():
            raise ConfigError(f"{key}.name {config.name!r} names no model after {LLM_PREFIX!r}")
        load_rubric(config.rubric)
    else:
        load_reward_function(config.name)


def load_judge(config: JudgeConfig, device: str | None = None) -> Any:
    """The :class:`~tunekit.judges.Judge` ``config`` names, on ``device`` (default: cuda when there is a GPU)."""
    import torch

    from tunekit.rl.rewards import RewardSource, load_reward_function

    if not config.is_llm:
        from tunekit.judges.scoring import ScoringJudge

        source = RewardSource(name=config.name, kwargs=dict(config.kwargs))
        return ScoringJudge(source, load_reward_function(config.name))
    from tunekit.judges.llm import LLMJudge
    from tunekit.judges.rubric import load_rubric
    from tunekit.models.load import ModelConfig, load_model, load_tokenizer

    path = config.name[len(LLM_PREFIX) :]
    rubric = load_rubric(config.rubric)
    tokenizer = load_tokenizer(path)
    model = load_model(ModelConfig(path=path, dtype=config.dtype))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return LLMJudge(
        model,
        tokenizer,
        rubric,
        name=config.name,
        reasoning=config.reasoning,
        max_reasoning_tokens=config.max_reasoning_tokens,
        both_orders=config.both_orders,
        batch_size=config.batch_size,
    )
