"""Rollouts: sampling completions from the policy with batched, KV-cached generation.

A :class:`Rollout` holds G completions for each of P prompts, as N = P * G rows; the completions of prompt p
are rows ``[p * G, (p + 1) * G)``. Prompts are left-padded so that every completion starts at the same column,
and completions are right-padded after their EOS. With the own-decoder fast path on, LLaMA-style models decode
through tunekit's own loop (:mod:`tunekit.fast.decode`: each prompt prefilled once for its whole group, a
preallocated KV cache); otherwise rollouts go through ``transformers``' ``generate``. Both stop early once every
row has finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tunekit.data.prompts import PromptExample
from tunekit.errors import require
from tunekit.fast import COMPILED, fast_paths_of
from tunekit.fast.decode import KVContext, decode_turn, rollout_decoder
from tunekit.fast.packed_decode import packed_linears
from tunekit.fast.sampling import Sampler
from tunekit.losses.sft import IGNORE_INDEX
from tunekit.models.reference import unwrap


@dataclass
class SamplingConfig:
    # Completions sampled per prompt (GRPO: the group size, at least 2; PPO: usually 1).
    num_generations: int = 4
    # Longest completion, in tokens; one that reaches it without EOS or a stop string counts as truncated.
    max_new_tokens: int = 32
    # 0 samples greedily.
    temperature: float = 1.0
    # 0 keeps every token; otherwise only the k most likely are sampled.
    top_k: int = 0
    # Nucleus sampling: only from the smallest set of tokens whose probability reaches top_p (1.0: all).
    top_p: float = 1.0
    # Generation of a row also stops at any of these strings (besides EOS).
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(self.num_generations >= 1, "num_generations", f"must be at least 1, got {self.num_generations}")
        check_sampling(self)


def check_sampling(config: Any) -> None:
    """The checks of sampling settings, shared by :class:`SamplingConfig` and evaluation's generation settings and
    run when either is built: an :class:`~tunekit.errors.InvalidValue` for the first key at fault. ``config`` has
    ``max_new_tokens``, ``temperature``, ``top_k`` and ``top_p``. A top_p of 0 or a negative temperature would not
    fail: it would turn the distribution upside down and sample the least likely tokens."""
    require(config.max_new_tokens >= 1, "max_new_tokens", f"must be at least 1, got {config.max_new_tokens}")
    require(config.temperature >= 0, "temperature", f"must be 0 (greedy) or more, got {config.temperature}")
    require(config.top_k >= 0, "top_k", f"must be 0 (off) or more, got {config.top_k}")
    require(0 < config.top_p <= 1, "top_p", f"must be in (0, 1], got {config.top_p}")


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [N, L] left-padded prompt, then the completion, right-padded
    attention_mask: torch.Tensor  # [N, L] 1 on real prompt and completion tokens
    position_ids: torch.Tensor  # [N, L] counted over real tokens, as during generation
    labels: torch.Tensor  # [N, L] completion tokens (through EOS), IGNORE_INDEX elsewhere
    truncated: torch.Tensor  # [N] bool: reached max_new_tokens without EOS or a stop string
    completion_lengths: torch.Tensor  # [N] tokens in each completion (EOS included)
    prompts: list[str]  # [N]
    completions: list[str]  # [N] decoded, without special tokens
    columns: dict[str, list[Any]]  # [N] per column
    prompt_index: list[int]  # [N] each completion's prompt, by its row number in the source

    def batch(self) -> dict[str, torch.Tensor]:
        """The tensors a forward pass and ``token_logps`` take, and ``example_ids`` [N]: each row's prompt by its
        row number in the source, which loss-spike reports name."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "labels": self.labels,
            "example_ids": torch.tensor(self.prompt_index),
        }


@torch.no_grad()
def generate_rollout(
    model: torch.nn.Module, tokenizer: Any, prompts: list[PromptExample], sampling: SamplingConfig
) -> Rollout:
    """Sample ``sampling.num_generations`` completions for each prompt."""
    return generate_turn(model, tokenizer, prompts, sampling)[0]


def continues(model: torch.nn.Module, past: KVContext, width: int, sampling: SamplingConfig) -> bool:
    """Whether a turn of ``width`` more prompt tokens can go on from ``past``: tunekit's own decoder still covers the
    rollout at the positions it reaches (a sliding window shorter than them does not). Where not, the caller reads
    the turn's whole context through ``generate`` instead."""
    return rollout_decoder(unwrap(model), _furthest_position(past, width, sampling)) is not None


def _furthest_position(past: KVContext | None, width: int, sampling: SamplingConfig) -> int:
    """How many positions a turn of ``width`` prompt columns reaches: the context's real tokens (not its columns,
    which count padding and what rows sampled after they ended), the prompt, and ``max_new_tokens``."""
    before = int(past.next_position.max()) if past is not None else 0
    return before + width + sampling.max_new_tokens


def generate_turn(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[PromptExample],
    sampling: SamplingConfig,
    past: KVContext | None = None,
    keep_context: bool = False,
) -> tuple[Rollout, KVContext | None]:
    """:func:`generate_rollout`, going on from ``past`` (one row per prompt, whose ``prompt_ids`` are then the tokens
    that follow that row's context) and returning, with ``keep_context``, the KV context a later turn goes on from
    (its N rows cut to the completions kept). The context is None, and ``past`` must be None, where the rollout goes
    through ``transformers``' ``generate`` (no own decoder): a multi-turn caller then prefills each turn's whole
    context.
    """
    group = sampling.num_generations
    rows = [p for p in prompts for _ in range(group)]
    width = max(len(p.prompt_ids) for p in prompts)
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_padded(prompts, width, pad)  # [P, W] each
    device = next(model.parameters()).device
    generator = unwrap(model)
    was_training = generator.training
    generator.eval()
    ends = end_token_ids(generator, tokenizer)
    lean = rollout_decoder(generator, _furthest_position(past, width, sampling))
    context = None
    if lean is not None:
        paths = fast_paths_of(generator)
        settings = (
            Sampler(sampling.temperature, sampling.top_k, sampling.top_p),
            ends,
            pad,
            _stop_check(tokenizer, sampling.stop_strings),
            packed_linears(lean, len(rows)) if paths.uses("packed-decode") else None,
            paths.uses(COMPILED),
        )
        ids, mask = prompt_ids.to(device), prompt_mask.to(device)
        new = sampling.max_new_tokens
        completions, context = decode_turn(lean, ids, mask, group, new, *settings, past=past, keep_context=keep_context)
        completions = completions.cpu()
    else:
        if past is not None:
            raise ValueError("a rollout through transformers' generate cannot go on from a KV context (see continues)")
        completions = generate_with_transformers(generator, tokenizer, prompt_ids, prompt_mask, group, sampling, ends)
    generator.train(was_training)
    prompt_ids = prompt_ids.repeat_interleave(group, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(group, dim=0)
    lengths, finished, texts = [], [], []
    for row in completions.tolist():
        text, length, done = _cut(row, tokenizer, sampling.stop_strings, ends)
        texts.append(text)
        lengths.append(length)
        finished.append(done)
    n, new = completions.shape
    completion_mask = torch.arange(new)[None, :] < torch.tensor(lengths)[:, None]
    input_ids = torch.cat([prompt_ids, torch.where(completion_mask, completions, pad)], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask.long()], dim=1)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, width:] = torch.where(completion_mask, completions, IGNORE_INDEX)
    columns = {key: [p.columns[key] for p in rows] for key in rows[0].columns}
    rollout = Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        labels=labels,
        truncated=~torch.tensor(finished),
        completion_lengths=torch.tensor(lengths),
        prompts=[p.prompt for p in rows],
        completions=texts,
        columns=columns,
        prompt_index=[p.index for p in rows],
    )
    return rollout, context.keep(rollout.completion_lengths) if context is not None else None


def left_padded(prompts: list[PromptExample], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[P, W] token ids and attention mask of ``prompts``, left-padded to ``width``."""
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p.prompt_ids) :] = torch.tensor(p.prompt_ids)
        mask[b, width - len(p.prompt_ids) :] = 1
    return ids, mask


def generate_with_transformers(
    model: Any,
    tokenizer: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    group: int,
    sampling: SamplingConfig,
    end_ids: list[int],
) -> torch.Tensor:
    """[P, W] prompts -> [N, T] new tokens through ``transformers``' ``generate``, for models the lean loop does not
    cover (prompt-learning adapters, other attention designs)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "do_sample": sampling.temperature > 0,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": end_ids or None,
        "use_cache": True,
    }
    if sampling.temperature > 0:
        kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k or None, top_p=sampling.top_p)
    if sampling.stop_strings:
        kwargs.update(stop_strings=sampling.stop_strings, tokenizer=tokenizer)
    device = next(model.parameters()).device
    ids = prompt_ids.repeat_interleave(group, dim=0).to(device)
    mask = prompt_mask.repeat_interleave(group, dim=0).to(device)
    # generate fills every field left unset from the checkpoint's generation_config.json (a repetition penalty,
    # suppressed tokens, a minimum length...). Rollouts must sample from the policy's own distribution, shaped by
    # `sampling` alone, as the lean loop does, so the checkpoint's config is set aside for the call.
    from transformers import GenerationConfig

    holder = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = holder.generation_config
    holder.generation_config = GenerationConfig()
    try:
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs).cpu()[:, prompt_ids.shape[1] :]
    finally:
        holder.generation_config = saved


def _stop_check(tokenizer: Any, stop_strings: list[str]) -> Callable[[list[int]], bool] | None:
    """Whether a row's tokens so far contain one of ``stop_strings`` (None when there are none)."""
    if not stop_strings:
        return None

    def stopped(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return any(stop in text for stop in stop_strings)

    return stopped


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a completion: the tokenizer's EOS and every end token of the checkpoint's generation
    config. Chat models often end a turn with a token of their own (Llama 3's ``<|eot_id|>``, Qwen's
    ``<|im_end|>``) that the generation config lists beside the tokenizer's EOS; ``generate`` stops at all of them,
    and so do rollouts."""
    ends = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(e for e in ends if e is not None))


def _cut(tokens: list[int], tokenizer: Any, stop_strings: list[str], end_ids: list[int]) -> tuple[str, int, bool]:
    """(text, length in tokens, finished) of one generated row: up to and including its first end token or a stop
    string, whichever came first.

    A stop string is looked for before the first end token only: a row that stopped on one is padded after it, and
    where the pad token is the EOS (a tokenizer that has no pad token of its own) that padding is no EOS the policy
    chose.
    """
    end = next((i for i, token in enumerate(tokens) if token in end_ids), len(tokens))
    sampled = tokens[:end]
    text = tokenizer.decode(sampled, skip_special_tokens=True)
    if any(stop in text for stop in stop_strings):
        # The row ends with the token that completed the earliest stop string.
        for length in range(1, len(sampled) + 1):
            prefix = tokenizer.decode(sampled[:length], skip_special_tokens=True)
            ends = [prefix.find(stop) + len(stop) for stop in stop_strings if stop in prefix]
            if ends:
                return prefix[: min(ends)], length, True
    if len(sampled) < len(tokens):
        return text, len(sampled) + 1, True
    pad = tokenizer.pad_token_id
    length = len(tokens)
    while length and tokens[length - 1] == pad:
        length -= 1
    return text, length, False


# generate(model, tokenizer, prompts, sampling) -> Rollout: generate_rollout, or a rollout that calls tools.
RolloutFn = Callable[[torch.nn.Module, Any, list[PromptExample], SamplingConfig], Rollout]


def rollouts_in_batches(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[PromptExample],
    sampling: SamplingConfig,
    batch_size: int,
    generate: RolloutFn | None = None,
) -> Iterator[Rollout]:
    """``generate`` (default :func:`generate_rollout`) over ``prompts``, ``batch_size`` prompts at a time (held-out
    evaluation)."""
    generate = generate or generate_rollout
    for start in range(0, len(prompts), batch_size):
        yield generate(model, tokenizer, prompts[start : start + batch_size], sampling)
