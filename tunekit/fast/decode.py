"""tunekit's own decoding loop for LLaMA-style causal LMs: each prompt prefilled once, a preallocated KV cache.

``transformers``' ``generate`` is general, and its generality costs a rollout twice over:

- it prefills every row, so a group of G completions of one prompt runs the prompt through the model G times;
- its default cache grows by concatenation, copying every layer's keys and values at each new token, and each
  step goes through the full model forward (mask building, cache dispatch, output bookkeeping).

:func:`decode` prefills the P distinct prompts once through the model's own forward, copies their keys and values
into a cache sized for the whole rollout (G rows a prompt), and then runs the decoder layers itself, one token a
step: norms, projections and MLPs are the model's modules (so LoRA, DoRA, IA3 and 4-bit weights behave exactly as
in training), and only rotary embedding, the cache write and attention are written out here.

When the run compiled its blocks (``train.compile``), the per-token step is compiled too
(:func:`compiled_step`): at a few rows a step, its norms, rotary, cache writes and residual adds are small tensors
paid for in per-operator overhead, which inductor's fused loops remove.

That is only valid for models whose attention is exactly LLaMA's (rotary q/k, grouped keys and values, no
sliding window within the rollout's length) and whose adapters live inside linear layers. :func:`unsupported`
says why a model does not qualify; :func:`rollout_decoder` picks this loop for a rollout when the own-decoder
fast path is on and the model qualifies, and ``generate_rollout`` uses ``generate`` otherwise. Any device.

Shapes: P prompts, G completions each, N = P * G rows (prompt p owns rows ``[p * G, (p + 1) * G)``), W prompt
columns (left-padded), M = max_new_tokens, D the head dimension.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from transformers import DynamicCache

from tunekit.fast import fast_paths_of, note_once
from tunekit.fast.packed_decode import Projection, Projections
from tunekit.fast.sampling import Sampler

# Attention classes that compute exactly q/k/v projections, rotary q and k, grouped-query softmax attention and an
# output projection (projection biases live inside the linear modules).
_LLAMA_ATTENTION = {"LlamaAttention", "MistralAttention", "Qwen2Attention"}
# Gated MLPs computing down(act(gate(x)) * up(x)).
_GATED_MLP = {"LlamaMLP", "MistralMLP", "Qwen2MLP"}
# peft methods whose changes live inside linear layers; prompt methods change what attention sees.
_IN_LAYER_ADAPTERS = {"LORA", "IA3"}


def unsupported(model: torch.nn.Module, total_length: int | None = None) -> str | None:
    """Why :func:`decode` would not compute what ``model``'s own forward computes, or None when it would.

    ``model`` is a transformers causal LM or a peft model of one. ``total_length``, the prompt width plus
    ``max_new_tokens`` of a rollout, is checked against the model's sliding window, which the loop does not model
    (None: not checked). Sharded weights (ZeRO-3, FSDP) are left to ``generate`` as well: they are gathered by
    hooks on the modules the loop goes around, and every process must keep decoding until all have finished,
    which ``generate`` arranges.
    """
    if any(hasattr(param, "ds_id") or isinstance(param, DTensor) for param in model.parameters()):
        return "the weights are sharded (FSDP or ZeRO-3)"
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None:
        active = peft_config.get(getattr(model, "active_adapter", "default"))
        kind = None if active is None else str(getattr(active.peft_type, "value", active.peft_type))
        if kind not in _IN_LAYER_ADAPTERS:
            return f"the {kind} adapter changes what attention sees; LoRA and IA3 are covered"
        model = model.get_base_model()
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if layers is None or not all(hasattr(body, name) for name in ("embed_tokens", "norm", "rotary_emb")):
        return f"{type(model).__name__} is not laid out as a LLaMA-style causal LM"
    if not hasattr(model, "lm_head"):
        return f"{type(model).__name__} has no lm_head"
    for layer in layers:
        if type(layer.self_attn).__name__ not in _LLAMA_ATTENTION or type(layer.mlp).__name__ not in _GATED_MLP:
            return f"{type(layer.self_attn).__name__} / {type(layer.mlp).__name__} are not LLaMA's attention and MLP"
    window = getattr(model.config, "sliding_window", None)
    uses_window = getattr(model.config, "use_sliding_window", True)
    if total_length is not None and window is not None and uses_window and window < total_length:
        return f"the sliding window ({window}) is shorter than prompt plus completion ({total_length} tokens)"
    return None


def lean_decoder(model: torch.nn.Module, total_length: int) -> torch.nn.Module | None:
    """The causal LM :func:`decode` runs for ``model`` (a peft model's base, with its adapter layers in place), or
    None when :func:`unsupported` refuses it."""
    if unsupported(model, total_length) is not None:
        return None
    return model.get_base_model() if getattr(model, "peft_config", None) is not None else model


def rollout_decoder(model: torch.nn.Module, total_length: int) -> torch.nn.Module | None:
    """The model :func:`decode` runs for a rollout of ``total_length`` tokens by ``model``, or None for
    transformers' ``generate``: when the run turned own-decoder off, or this rollout is one the loop does not
    cover (said once)."""
    if not fast_paths_of(model).uses("own-decoder"):
        return None
    refusal = unsupported(model, total_length)
    if refusal is not None:
        note_once("own-decoder", f"{refusal}; these rollouts go through transformers' generate")
        return None
    return lean_decoder(model, total_length)


def _cache_argument(model: torch.nn.Module) -> str:
    """The name ``model.forward`` takes a KV cache by: transformers 5.25 renamed ``past_key_values`` to ``cache``
    (the old name warns, and goes in 5.40); earlier 5.x releases know only the old one."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class KVContext:
    """What a decode read and wrote, for a later decode of the same rows to go on from without reading those tokens
    again (a multi-turn rollout: the tools' answers, then the policy's next turn). N rows, C columns:

    - ``keys``, ``values``: one [N, H_kv, C, D] tensor each per layer (rotary applied), as the decode left them;
    - ``visible``: [N, C] bool, the columns holding the row's own tokens (not padding, and after :meth:`keep`, not
      what the row sampled or was fed after the end its rollout kept);
    - ``next_position``: [N], the position the row's next token takes;
    - ``start``, ``first_position`` [N]: the column and the position of the first generated token.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    visible: torch.Tensor
    next_position: torch.Tensor
    start: int
    first_position: torch.Tensor

    def keep(self, lengths: torch.Tensor) -> KVContext:
        """The context with only the first ``lengths`` [N] generated tokens of each row in it (what the rollout kept
        of them: through the end token or the stop string)."""
        lengths = lengths.to(self.visible.device)
        columns = torch.arange(self.visible.shape[1] - self.start, device=self.visible.device)
        generated = columns[None, :] < lengths[:, None]
        visible = torch.cat([self.visible[:, : self.start], generated], dim=1)
        return dataclasses.replace(self, visible=visible, next_position=self.first_position + lengths)

    def rows(self, index: torch.Tensor) -> KVContext:
        """The context of rows ``index`` [K] only."""
        index = index.to(self.visible.device)
        return KVContext(
            [k[index] for k in self.keys],
            [v[index] for v in self.values],
            self.visible[index],
            self.next_position[index],
            self.start,
            self.first_position[index],
        )


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    group: int,
    max_new_tokens: int,
    sampler: Sampler,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    finished_by: Callable[[list[int]], bool] | None = None,
    linears: dict[Projections, Projection] | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """Sample ``group`` completions for each prompt; returns [N, T] new tokens, T <= ``max_new_tokens``.

    ``model`` is what :func:`lean_decoder` returned, in eval mode. ``prompt_ids`` and ``prompt_mask`` are [P, W]
    and left-padded. A row is finished after any of ``eos_token_ids`` (none: only by length), or once
    ``finished_by(its tokens so far)`` says so (stop strings); a finished row gets ``pad_token_id`` from then on,
    and decoding ends early when every row has finished.
    ``linears`` computes groups of linear modules in the decode steps (see
    :func:`tunekit.fast.packed_decode.packed_linears`); modules not in it are called as they are. ``compiled`` runs the
    decode steps through :func:`compiled_step`.
    """
    settings = (sampler, eos_token_ids, pad_token_id, finished_by, linears, compiled)
    return decode_turn(model, prompt_ids, prompt_mask, group, max_new_tokens, *settings, keep_context=False)[0]


@torch.no_grad()
def decode_turn(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    group: int,
    max_new_tokens: int,
    sampler: Sampler,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    finished_by: Callable[[list[int]], bool] | None = None,
    linears: dict[Projections, Projection] | None = None,
    compiled: bool = False,
    past: KVContext | None = None,
    keep_context: bool = True,
) -> tuple[torch.Tensor, KVContext | None]:
    """:func:`decode`, going on from ``past`` when given, and returning the context a later turn goes on from (None
    without ``keep_context``).

    With ``past`` (N rows, ``group`` 1), ``prompt_ids`` [N, W] are the tokens that follow each row's context (a
    tool's answer and the next turn's header, left-padded): only they are prefilled, attending to the context's
    visible columns, at positions that go on from its ``next_position``. The returned context holds the past, these
    tokens and every generated one (the last one fed too, so that it is in the cache); the caller cuts it to what
    its rollout kept with :meth:`KVContext.keep`.
    """
    table = linears or {}
    step_logits = compiled_step() if compiled else _next_logits
    rows = prompt_ids.shape[0] * group
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prefill = DynamicCache()
    mask = prompt_mask
    if past is not None:
        if group != 1:
            raise ValueError(f"a decode that goes on from a context samples one completion per row, not {group}")
        positions = positions + past.next_position[:, None]
        for layer, (keys, values) in enumerate(zip(past.keys, past.values, strict=True)):
            prefill.update(keys, values, layer)
        mask = torch.cat([past.visible.to(prompt_mask.dtype), prompt_mask], dim=1)
    width = mask.shape[1]  # the cache's columns before the first generated token
    out = model(
        input_ids=prompt_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{_cache_argument(model): prefill},
    )
    logits = out.logits[:, -1].float().repeat_interleave(group, dim=0)  # [N, V]
    cache = [_KVBuffer(layer.keys, layer.values, group, width + max_new_tokens) for layer in prefill.layers]
    del prefill, out
    if compiled:  # rollouts differ in prompt width: the compiled step takes any cache capacity
        for buffer in cache:
            for tensor in (buffer.keys, buffer.values):
                torch._dynamo.mark_static(tensor, 0)
                torch._dynamo.maybe_mark_dynamic(tensor, 2)
    # [N, 1, 1, W + M]: attend to the real prompt tokens and to every generated one (a finished row's pad tokens
    # are attended to as well; nothing reads that row's output any more).
    visible = torch.cat([mask, mask.new_ones(mask.shape[0], max_new_tokens)], dim=1)
    visible = visible.bool().repeat_interleave(group, dim=0)[:, None, None, :]
    position = positions[:, -1:].repeat_interleave(group, dim=0)  # [N, 1]
    first_position = position[:, 0] + 1
    finished = torch.zeros(rows, dtype=torch.bool, device=prompt_ids.device)
    ends = torch.tensor(list(eos_token_ids), dtype=torch.long, device=prompt_ids.device)
    generated: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = sampler(logits).masked_fill(finished, pad_token_id)  # [N]
        generated.append(token)
        if len(ends):
            finished |= torch.isin(token, ends)
        if finished_by is not None:
            finished |= _check(finished, finished_by, torch.stack(generated, dim=1))
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        position = position + 1
        column = width + step  # where this token's keys and values go
        logits = step_logits(model, table, cache, token, position, visible[..., : column + 1], column)
    tokens = torch.stack(generated, dim=1)
    if not keep_context:
        return tokens, None
    # The last token sampled has not been fed yet; feeding it puts its keys and values in the context.
    column = width + len(generated) - 1
    step_logits(model, table, cache, generated[-1], position + 1, visible[..., : column + 1], column)
    used = column + 1
    context = KVContext(
        keys=[buffer.keys[:, :, :used] for buffer in cache],
        values=[buffer.values[:, :, :used] for buffer in cache],
        visible=visible[:, 0, 0, :used],
        next_position=first_position + len(generated),
        start=width,
        first_position=first_position,
    )
    return tokens, context


def _check(finished: torch.Tensor, finished_by: Callable[[list[int]], bool], tokens: torch.Tensor) -> torch.Tensor:
    """[N] bool: rows not yet finished that ``finished_by`` now ends."""
    ended = torch.zeros_like(finished)
    for row in (~finished).nonzero().flatten().tolist():
        ended[row] = finished_by(tokens[row].tolist())
    return ended


class _KVBuffer:
    """One layer's keys and values, [N, H_kv, W + M, D] each, filled with the prefill's [P, H_kv, W, D]."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, group: int, capacity: int) -> None:
        prompts, heads, width, dim = keys.shape
        self.keys = keys.new_empty(prompts * group, heads, capacity, dim)
        self.values = values.new_empty(prompts * group, heads, capacity, dim)
        self.keys[:, :, :width] = keys.repeat_interleave(group, dim=0)
        self.values[:, :, :width] = values.repeat_interleave(group, dim=0)

    def append(self, column: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write [N, H_kv, 1, D] at ``column``; returns views of columns ``[0, column]``."""
        self.keys[:, :, column : column + 1] = keys
        self.values[:, :, column : column + 1] = values
        return self.keys[:, :, : column + 1], self.values[:, :, : column + 1]


def _next_logits(
    model: Any,
    table: dict[Projections, Projection],
    cache: list[_KVBuffer],
    tokens: torch.Tensor,
    position: torch.Tensor,
    visible: torch.Tensor,
    column: int,
) -> torch.Tensor:
    """One decode step: [N] tokens at [N, 1] positions -> [N, V] logits of the next token."""

    def project(x: torch.Tensor, *modules: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        packed = table.get(modules)
        return packed(x) if packed is not None else tuple(module(x) for module in modules)

    body = model.model
    rows = tokens.shape[0]
    hidden = body.embed_tokens(tokens)  # [N, hidden]
    cos, sin = body.rotary_emb(hidden, position)  # [N, 1, D] each
    cos, sin = cos[:, None], sin[:, None]  # [N, 1, 1, D]
    for layer, kv in zip(body.layers, cache, strict=True):
        attention, mlp = layer.self_attn, layer.mlp
        q, k, v = project(layer.input_layernorm(hidden), attention.q_proj, attention.k_proj, attention.v_proj)
        q, k, v = (t.reshape(rows, -1, 1, attention.head_dim) for t in (q, k, v))  # [N, H or H_kv, 1, D]
        keys, values = kv.append(column, _rotate(k, cos, sin), v)
        query = _rotate(q, cos, sin)
        # Under bf16 autocast the rotary angles (float32) promote queries and keys to float32 while values stay
        # bf16, as in the prefill's cache; SDPA needs one dtype. A no-op in fp32.
        attended = F.scaled_dot_product_attention(
            query,
            keys.to(query.dtype),
            values.to(query.dtype),
            attn_mask=visible,
            scale=attention.scaling,
            enable_gqa=True,
        )  # [N, H, 1, D]
        hidden = hidden + project(attended.reshape(rows, -1), attention.o_proj)[0]
        gate, up = project(layer.post_attention_layernorm(hidden), mlp.gate_proj, mlp.up_proj)
        hidden = hidden + project(mlp.act_fn(gate) * up, mlp.down_proj)[0]
    return project(body.norm(hidden), model.lm_head)[0].float()


_COMPILED_STEP: Callable[..., torch.Tensor] | None = None


def compiled_step() -> Callable[..., torch.Tensor]:
    """The decode step compiled by inductor, created on first use and shared by every rollout.

    The KV length is what changes from step to step: dynamo's automatic dynamic shapes make it symbolic from the
    second step on, and :func:`decode` marks the cache's capacity dynamic, so a rollout costs two compilations and
    later rollouts with the same row count none. The row count stays static (a new one compiles its own graph):
    symbolic rows multiply the compile time of this graph several times over, far more than one graph per row
    count costs in a run, whose rollouts mostly share one row count.
    """
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        compiled = torch.compile(_next_logits, dynamic=None)

        def step(
            model: Any,
            table: dict[Projections, Projection],
            cache: list[_KVBuffer],
            tokens: torch.Tensor,
            position: torch.Tensor,
            visible: torch.Tensor,
            column: int,
        ) -> torch.Tensor:
            for rows_first in (tokens, position, visible):
                torch._dynamo.mark_static(rows_first, 0)
            return compiled(model, table, cache, tokens, position, visible, column)

        _COMPILED_STEP = step
    return _COMPILED_STEP


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of [N, H, 1, D] by [N, 1, 1, D] angles (the half-split convention of LLaMA)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin
