"""An LLM as judge: a causal LM prompted with a rubric through its chat template, its verdict read from its
probabilities over the rubric's answers (see :mod:`tunekit.judges.verdict`).

Each judgement is one forward pass over the rendered conversation and the verdict prefix; the verdict is the
distribution of the next token over the first tokens of the allowed answers. With ``reasoning`` the judge first
writes its reasoning (greedy, KV-cached, through the rollouts' generation), and the verdict is read after it.
"""

from __future__ import annotations

from typing import Any

import torch

from tunekit.data.formats import render_chat
from tunekit.data.prompts import PromptExample
from tunekit.errors import ConfigError
from tunekit.judges import PairVerdict
from tunekit.judges.rubric import Rubric, row_values
from tunekit.judges.verdict import choice_probs, combine_orders, expected_score
from tunekit.rl.rollout import SamplingConfig, generate_rollout, left_padded


class LLMJudge:
    """A :class:`~tunekit.judges.Judge` that asks ``model`` (with ``tokenizer``) per ``rubric``."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        rubric: Rubric,
        name: str = "llm",
        reasoning: bool = False,
        max_reasoning_tokens: int = 256,
        both_orders: bool = True,
        batch_size: int = 8,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.rubric = rubric
        self.name = name
        self.reasoning = reasoning
        self.max_reasoning_tokens = max_reasoning_tokens
        self.both_orders = both_orders
        self.batch_size = batch_size
        self._prefix_ids, self._choice_ids = verdict_tokens(tokenizer, rubric)

    # ------------------------------------------------------------------------------------------------ the interface

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> torch.Tensor:
        """[N] expected scores under a pointwise rubric."""
        return expected_score(self.score_probs(prompts, completions, columns), self._values())

    def score_probs(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> torch.Tensor:
        """[N, C] the judge's probability of each of the rubric's C scores, per completion."""
        self._require("pointwise", "scores one response")
        texts = [
            self.rubric.fill({"prompt": p, "response": c, **row_values(self.rubric, columns, i)})
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
        return self._verdicts(texts)

    def compare(
        self, prompts: list[str], first: list[str], second: list[str], columns: dict[str, list[Any]]
    ) -> PairVerdict:
        if self.rubric.kind == "pointwise":
            # Two scores, compared as distributions: P(first's score > second's), ties counted half.
            p1 = self.score_probs(prompts, first, columns)
            p2 = self.score_probs(prompts, second, columns)
            values = self._values()
            ahead = (values[:, None] > values[None, :]).float() + 0.5 * (values[:, None] == values[None, :]).float()
            prob = torch.einsum("ni,ij,nj->n", p1, ahead, p2)
            s1, s2 = expected_score(p1, values), expected_score(p2, values)
            return PairVerdict(prob, s1 - s2, torch.ones_like(prob, dtype=torch.bool), s1, s2)
        in_order = self._pairwise(prompts, first, second, columns)
        if not self.both_orders:
            return PairVerdict(in_order, 2 * in_order - 1, torch.ones_like(in_order, dtype=torch.bool))
        swapped = self._pairwise(prompts, second, first, columns)
        prob, consistent = combine_orders(in_order, swapped)
        return PairVerdict(prob, 2 * prob - 1, consistent)

    # ------------------------------------------------------------------------------------------------ the workings

    def _pairwise(self, prompts: list[str], a: list[str], b: list[str], columns: dict[str, list[Any]]) -> torch.Tensor:
        """[N] P(the response shown first is better)."""
        self._require("pairwise", "compares two responses")
        texts = [
            self.rubric.fill({"prompt": p, "response_a": x, "response_b": y, **row_values(self.rubric, columns, i)})
            for i, (p, x, y) in enumerate(zip(prompts, a, b, strict=True))
        ]
        return self._verdicts(texts)[:, 0]

    def _require(self, kind: str, what: str) -> None:
        if self.rubric.kind != kind:
            raise ConfigError(
                f"judge {self.name}: rubric {self.rubric.name} is {self.rubric.kind}, but this task {what}"
            )

    def _values(self) -> torch.Tensor:
        return torch.tensor(self.rubric.values, dtype=torch.float32)

    def _conversation(self, user_text: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.rubric.system}] if self.rubric.system else []
        return [*system, {"role": "user", "content": user_text}]

    @torch.no_grad()
    def _verdicts(self, user_texts: list[str]) -> torch.Tensor:
        """[N, C] the verdict distribution after each filled template."""
        if self.reasoning:
            contexts = self._with_reasoning(user_texts)
        else:
            contexts = [self._context_ids(self._conversation(text)) for text in user_texts]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(contexts), self.batch_size):
            chunk = [PromptExample("", ids, {}, 0) for ids in contexts[start : start + self.batch_size]]
            ids, mask = left_padded(chunk, max(len(c.prompt_ids) for c in chunk), self.tokenizer.pad_token_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
            ).logits[:, -1]
            out.append(choice_probs(logits, self._choice_ids.to(device)).cpu())
        return torch.cat(out)

    def _context_ids(self, conversation: list[dict[str, str]], reasoning: str = "") -> list[int]:
        """The judge's turn, opened by its chat template, then any reasoning and the verdict prefix, as ids."""
        text = render_chat(conversation, self.tokenizer, add_generation_prompt=True)
        ids = self.tokenizer(text + reasoning, add_special_tokens=False)["input_ids"]
        return ids + self._prefix_ids

    def _with_reasoning(self, user_texts: list[str]) -> list[list[int]]:
        """Each judge turn with the judge's own reasoning written first (greedy), then the verdict prefix."""
        asks = [self._conversation(f"{text}\n\n{self.rubric.reasoning or ''}".rstrip()) for text in user_texts]
        prompts = []
        for i, conversation in enumerate(asks):
            text = render_chat(conversation, self.tokenizer, add_generation_prompt=True)
            prompts.append(PromptExample(text, self.tokenizer(text, add_special_tokens=False)["input_ids"], {}, i))
        sampling = SamplingConfig(num_generations=1, max_new_tokens=self.max_reasoning_tokens, temperature=0.0)
        thoughts = []
        for start in range(0, len(prompts), self.batch_size):
            thoughts += generate_rollout(
                self.model, self.tokenizer, prompts[start : start + self.batch_size], sampling
            ).completions
        return [self._context_ids(c, reasoning + "\n") for c, reasoning in zip(asks, thoughts, strict=True)]


def verdict_tokens(tokenizer: Any, rubric: Rubric) -> tuple[list[int], torch.Tensor]:
    """``(prefix ids, [C] answer ids)``: the verdict prefix's tokens to feed, and the token that starts each answer
    after them.

    Tokenizers often merge the end of the prefix with the answer ("Verdict: " + "A" becomes "Verdict:" + " A"), so
    the prefix is fed up to where it and every answer part ways, and each answer is read at its token there. Answers
    that start with the same token cannot be told apart: a ConfigError naming the rubric.
    """
    prefix = tokenizer(rubric.verdict_prefix, add_special_tokens=False)["input_ids"]
    answers = [
        tokenizer(rubric.verdict_prefix + choice, add_special_tokens=False)["input_ids"] for choice in rubric.choices
    ]
    shared = min(_common_length(prefix, a) for a in answers)
    if any(len(a) <= shared for a in answers):
        raise ConfigError(f"rubric {rubric.name}: an answer adds no token after the verdict prefix")
    firsts = [a[shared] for a in answers]
    if len(set(firsts)) != len(firsts):
        raise ConfigError(
            f"rubric {rubric.name}: the answers {list(rubric.choices)} do not start with distinct tokens after "
            f"{rubric.verdict_prefix!r} in this judge's tokenizer, so its verdict cannot be read; choose answers "
            "that start differently (A/B, digits)"
        )
    return prefix[:shared], torch.tensor(firsts)


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
