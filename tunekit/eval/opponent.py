"""The other side of a win rate: the data's reference completions, or another model generating from the same rows.

Everything that can fail about the opponent (a missing reference column, a tokenizer that does not load, a prompt
too long for it) fails in :func:`prepare_opponent`, before the evaluated model loads; the opponent model itself
loads only after the evaluated model is done with, so that one model is in memory at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunekit.data.prompts import PromptExample
from tunekit.data.sources import Rows
from tunekit.eval.data import EvalDataConfig, build_prompts, require_column
from tunekit.eval.model import load_eval_model
from tunekit.eval.sampling import GenerationConfig, generate
from tunekit.fast import fast_paths_of
from tunekit.models.load import ModelConfig, load_tokenizer
from tunekit.rl.rewards import RewardFn, RewardSource

REFERENCE = "reference"


@dataclass
class Opponent:
    path: str  # REFERENCE, or the opponent model's path
    completions: list[str] = field(default_factory=list)  # [P] the reference completions (REFERENCE only)
    tokenizer: Any = None  # the opponent model's own tokenizer and prompts (a model only)
    prompts: list[PromptExample] = field(default_factory=list)

    @property
    def is_model(self) -> bool:
        return self.path != REFERENCE


def prepare_opponent(path: str, rows: Rows, data: EvalDataConfig, model: ModelConfig) -> Opponent:
    """The reference completions of ``rows``, or the opponent model's tokenizer and the rows as its prompts."""
    if path == REFERENCE:
        texts = require_column(rows, data.completion_column, "data.completion_column")
        return Opponent(path, completions=[str(t) for t in texts])
    tokenizer = load_tokenizer(path, model.trust_remote_code)
    return Opponent(path, tokenizer=tokenizer, prompts=build_prompts(rows, data, tokenizer))


def opponent_completions(
    opponent: Opponent,
    model: ModelConfig,
    device: str,
    generation: GenerationConfig,
    batch_size: int,
    select_by: Sequence[tuple[RewardSource, RewardFn]] = (),
    say: Callable[[str], None] = print,
) -> list[str]:
    """[P] the opponent's completions: the references, or what the opponent model generates with the evaluated
    model's settings (dtype, quantisation, fast-path switches, generation). ``say`` gets its fast paths."""
    if not opponent.is_model:
        return opponent.completions
    generator = load_eval_model(model, device, path=opponent.path)
    say(f"opponent {fast_paths_of(generator).summary()}")
    return generate(generator, opponent.tokenizer, opponent.prompts, generation, batch_size, select_by).completions
