"""Multi-turn rollouts that call tools: generate until the policy ends its turn, run the tool calls the turn wrote in a
sandbox, append the tools' answers as the chat template renders tool messages, and let the policy go on, up to
``tools.max_turns`` assistant turns.

The result is an ordinary :class:`~tunekit.rl.rollout.Rollout` (N = P * G rows), so GRPO's loss, KL and
advantages take it unchanged: the trajectory after the prompt holds the policy's tokens (labelled: trained) and the
tools' messages with the template's turn headers (``IGNORE_INDEX``: neither in the policy loss nor in the KL, since
both are taken over the label mask). Each turn is sampled with the KV-cached generation of
:func:`~tunekit.rl.rollout.generate_turn`, and the cache is carried from turn to turn: a later turn reads only the
tools' answers and its header, attending to the keys and values of everything before (the rows that called are
taken out of the cache, the others dropped). Where the rollout goes through ``transformers``' ``generate`` instead
of tunekit's own decoder, a later turn prefills its whole context again.

The rollout's extra columns reach reward functions as keyword arguments, beside the data's:

- ``final_response`` [N]: the text of the last assistant turn (what to read a final answer from);
- ``tool_calls`` [N]: each completion's calls, ``{"name", "arguments", "output", "ok", "error"}`` each;
- ``tool_cost`` [N]: the sum of the called tools' ``cost`` (``reward_models/tools.py:call_cost`` subtracts it).

``completions`` is the whole trajectory as text: the turns and the tools' messages as the template wrote them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tunekit.data.prompts import PromptExample
from tunekit.errors import ConfigError
from tunekit.losses.sft import IGNORE_INDEX
from tunekit.rl.reward_calls import check_reward_columns
from tunekit.rl.rewards import RewardSource
from tunekit.rl.rollout import Rollout, SamplingConfig, continues, generate_turn
from tunekit.tools.calls import CallResult, parse_tool_calls
from tunekit.tools.registry import Tool, ToolsConfig, load_tools
from tunekit.tools.sandbox import Limits, run_calls

TRAJECTORY_COLUMNS = ("final_response", "tool_calls", "tool_cost")
CALL_COST_REWARD = "reward_models/tools.py:call_cost"
_MARK = "\x00tunekit-turn\x00"


@dataclass
class _Row:
    """One completion being built: its context so far and its trajectory."""

    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # the trajectory's tokens after the prompt
    trained: list[bool] = field(default_factory=list)  # [len(ids)] the policy's own tokens
    texts: list[str] = field(default_factory=list)
    calls: list[CallResult] = field(default_factory=list)
    last_turn: str = ""
    truncated: bool = False


class ToolRollouts:
    """A drop-in for :func:`~tunekit.rl.rollout.generate_rollout` that lets the policy call ``tools``."""

    def __init__(self, config: ToolsConfig, tools: list[Tool], tokenizer: Any) -> None:
        self.config = config
        self.tools = {tool.name: tool for tool in tools}
        self.schemas = [tool.schema for tool in tools]
        self.limits = Limits(config.timeout_s, config.memory_mb, config.max_output_chars)
        self.closing = _turn_closing(tokenizer, self.schemas)

    @torch.no_grad()
    def __call__(
        self, model: torch.nn.Module, tokenizer: Any, prompts: list[PromptExample], sampling: SamplingConfig
    ) -> Rollout:
        group = sampling.num_generations
        rows = [_Row(list(p.prompt_ids)) for p in prompts for _ in range(group)]
        more = self.config.max_turns > 1
        first, context = generate_turn(model, tokenizer, prompts, sampling, keep_context=more)
        held = list(range(len(rows)))  # the rows the KV context holds, in its order
        active = self._take_turn(rows, held, first)
        one_each = SamplingConfig(**{**vars(sampling), "num_generations": 1})
        for turn_number in range(1, self.config.max_turns):
            if not active:
                break
            answers = self._answer_calls(rows, active, tokenizer)
            if context is not None and continues(model, context, max(map(len, answers)), one_each):
                # Only the tools' answers are read; the rest is in the cache.
                context = context.rows(torch.tensor([held.index(r) for r in active]))
                contexts = [PromptExample("", ids, {}, 0) for ids in answers]
            else:  # no own decoder (or not for this long a context): the turn reads its whole context
                context = None
                contexts = [PromptExample("", rows[r].prompt_ids + rows[r].ids, {}, 0) for r in active]
            more = turn_number < self.config.max_turns - 1
            turn, context = generate_turn(model, tokenizer, contexts, one_each, context, keep_context=more)
            held = active
            active = self._take_turn(rows, active, turn)
        rollout = _assemble(rows, [p for p in prompts for _ in range(group)], tokenizer.pad_token_id)
        rollout.columns["tool_cost"] = [self.cost(row.calls) for row in rows]
        return rollout

    def _take_turn(self, rows: list[_Row], active: list[int], turn: Rollout) -> list[int]:
        """Append each active row's new turn (trained tokens); the rows whose turn called a tool stay active."""
        still = []
        for k, r in enumerate(active):
            row = rows[r]
            labels = turn.labels[k]
            new = labels[labels != IGNORE_INDEX].tolist()
            row.ids += new
            row.trained += [True] * len(new)
            row.texts.append(turn.completions[k])
            row.last_turn = turn.completions[k]
            row.truncated = bool(turn.truncated[k])
            if not row.truncated and parse_tool_calls(turn.completions[k]):
                still.append(r)
        return still

    def _answer_calls(self, rows: list[_Row], active: list[int], tokenizer: Any) -> list[list[int]]:
        """Run the calls of every active row's last turn (all rows' calls at once, in parallel) and append the tool
        messages with the next turn's header, untrained; returns those tokens, a list per active row."""
        calls = [(r, call) for r in active for call in parse_tool_calls(rows[r].last_turn)]
        results = run_calls([c for _, c in calls], self.tools, self.limits, self.config.parallel_calls)
        appended = []
        for r in active:
            mine = [result for (row, _), result in zip(calls, results, strict=True) if row == r]
            rows[r].calls += mine
            text = self.closing(rows[r].ids[-1:] == [tokenizer.eos_token_id]) + self._tool_turns(mine, tokenizer)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            rows[r].ids += ids
            rows[r].trained += [False] * len(ids)
            rows[r].texts.append(text)
            appended.append(ids)
        return appended

    def _tool_turns(self, results: list[CallResult], tokenizer: Any) -> str:
        """The template's rendering of the tool messages and the next assistant header, after an assistant turn."""
        before = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARK}]
        answers = [{"role": "tool", "name": r.name, "content": r.output} for r in results]
        extra = {"tools": self.schemas} if self.schemas else {}
        start = tokenizer.apply_chat_template(before, tokenize=False, **extra)
        full = tokenizer.apply_chat_template(before + answers, tokenize=False, add_generation_prompt=True, **extra)
        if not full.startswith(start):
            raise ConfigError("the chat template renders a conversation differently from its own beginning")
        return full[len(start) :]

    def cost(self, results: list[CallResult]) -> float:
        return sum(self.tools[r.name].cost for r in results if r.name in self.tools)


def _turn_closing(tokenizer: Any, schemas: list[dict[str, Any]]):
    """What the template writes after an assistant turn's content (``</s>\\n`` for the tiny model's), as a function
    of whether the sampled turn already ended with the EOS token that begins it."""
    extra = {"tools": schemas} if schemas else {}
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARK}], tokenize=False, **extra
    )
    after = text[text.index(_MARK) + len(_MARK) :]
    eos = tokenizer.eos_token or ""

    def closing(ended_with_eos: bool) -> str:
        return after[len(eos) :] if ended_with_eos and eos and after.startswith(eos) else after

    return closing


def _assemble(rows: list[_Row], prompts: list[PromptExample], pad: int) -> Rollout:
    """The rows as one Rollout: prompts left-padded to one width, trajectories right-padded after them."""
    width = max(len(row.prompt_ids) for row in rows)
    length = max(len(row.ids) for row in rows)
    n = len(rows)
    input_ids = torch.full((n, width + length), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for r, row in enumerate(rows):
        p = len(row.prompt_ids)
        input_ids[r, width - p : width] = torch.tensor(row.prompt_ids)
        attention_mask[r, width - p : width + len(row.ids)] = 1
        if row.ids:
            ids = torch.tensor(row.ids)
            input_ids[r, width : width + len(ids)] = ids
            labels[r, width : width + len(ids)] = torch.where(torch.tensor(row.trained), ids, IGNORE_INDEX)
    columns = {key: [p.columns[key] for p in prompts] for key in prompts[0].columns}
    columns["final_response"] = [row.last_turn for row in rows]
    columns["tool_calls"] = [[c.record() for c in row.calls] for row in rows]
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        labels=labels,
        truncated=torch.tensor([row.truncated for row in rows]),
        completion_lengths=torch.tensor([sum(row.trained) for row in rows]),
        prompts=[p.prompt for p in prompts],
        completions=["".join(row.texts) for row in rows],
        columns=columns,
        prompt_index=[p.index for p in prompts],
    )


def tool_metrics(rollout: Rollout) -> dict[str, float]:
    """Per-step means over completions: calls made, calls that failed, and completions that called at all."""
    calls = rollout.columns.get("tool_calls")
    if calls is None:
        return {}
    n = max(len(calls), 1)
    return {
        "tool_calls": sum(len(c) for c in calls) / n,
        "tool_failures": sum(sum(not x["ok"] for x in c) for c in calls) / n,
        "tool_use_fraction": sum(bool(c) for c in calls) / n,
    }


def setup_tool_use(
    config: ToolsConfig, rewards: list, data: Any, tokenizer: Any
) -> tuple[ToolRollouts | None, list[dict[str, Any]] | None]:
    """The rollout function for ``config`` (None when it lists no tools) and the tool schemas the prompts show.

    Loads every tool up front; adds ``call_cost`` to ``rewards`` (in place) when a tool has a cost; refuses
    data.sources (a mixture's prompts are rendered without tools).
    """
    if not config.use:
        return None, None
    tools = load_tools(config.use)
    if any(spec.cost for spec in config.use):
        from tunekit.rl.rewards import load_reward_function

        rewards.append((RewardSource(name=CALL_COST_REWARD), load_reward_function(CALL_COST_REWARD)))
    if getattr(data, "sources", None):
        raise ConfigError("tools.use with data.sources: a mixture's prompts are not rendered with tools; use data.path")
    rollouts = ToolRollouts(config, tools, tokenizer)
    return rollouts, rollouts.schemas


def check_tool_rewards(rewards: list, prompts: list[PromptExample]) -> None:
    """Refuse, before the model loads, a reward function that cannot take the trajectory's columns beside the
    data's (one written without ``**columns``)."""
    check_reward_columns(rewards, [*(prompts[0].columns if prompts else {}), *TRAJECTORY_COLUMNS])
