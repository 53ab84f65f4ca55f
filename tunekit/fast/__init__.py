"""The fast paths: tunekit's hardware-specific speed code, behind one seam.

Every path computes what plain transformers + peft compute, only faster; each is turned on here, by
:func:`enable_fast_paths`, called once by each recipe on its prepared model (loaded, adapted, not yet handed to
accelerate). It returns a :class:`FastPaths` record of what it turned on and why the rest is off; the recipe
prints it and writes the resolved switches into ``config.yaml``. The rest of tunekit asks the record
(:func:`fast_paths_of`) whether a path is on, or, at the two places that reroute a forward (log-probs), the path's
own state (:func:`tunekit.fast.varlen.enabled`, :func:`tunekit.fast.last_layer.installed`).

=====================  ==========  ============================================================================
path                   hardware    what it does
=====================  ==========  ============================================================================
lean-lora              any         plain LoRA layers: a training forward on the merged weight ``W + s B A``, and
                                   the adapter's add fused into its second matmul elsewhere (:mod:`.lean_lora`)
padding-free           CPU; CUDA   padded batches run as one row of real tokens, attention per example
                       with torch  (:mod:`.varlen`); on CUDA one flash varlen call for the batch
                       >= 2.10     (:mod:`.flash_varlen`); older CUDA torch keeps padded batches
trimmed-last-layer     CPU         the last decoder layer of a padding-free training forward at label rows
                                   only (:mod:`.last_layer`)
own-decoder            any         rollouts through tunekit's decoding loop: each prompt prefilled once per
                                   group, a preallocated KV cache (:mod:`.decode`)
packed-decode          CPU         oneDNN-packed fp32 weights for the own decoder's steps (:mod:`.packed_decode`)
compiled-blocks        any         ``train.compile``: torch.compile of each decoder block for training forwards,
                                   and of the own decoder's step (:mod:`.compiled`)
=====================  ==========  ============================================================================

``model.fast_paths.enabled=false`` turns every path off, and a run is then plain transformers + peft; each path
has its own switch too. A path that cannot apply to a model (an adapter method it does not cover, an attention
it does not know, a library whose private internals it relies on changed: :mod:`.internals`) is off, and the
record says why. A path that turns itself down at run time for one call (a rollout longer than a sliding window,
say) says so once per process (:func:`note_once`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tunekit.errors import ConfigError


@dataclass
class FastPathConfig:
    # Master switch: false turns every path below off, and the run is plain transformers + peft.
    enabled: bool = True
    # Plain LoRA layers: a training forward on the merged weight, the adapter's add fused elsewhere (any device).
    lean_lora: bool = True
    # Padded batches run padding-free, attention per example (CPU; CUDA with torch >= 2.10 and flash varlen).
    padding_free: bool = True
    # The last layer of a padding-free training forward at label rows only (CPU).
    trimmed_last_layer: bool = True
    # Rollouts through tunekit's own decoding loop (LLaMA-style models with LoRA or IA3 adapters, or none).
    own_decoder: bool = True
    # oneDNN-packed fp32 weights for the own decoder's steps (CPU).
    packed_decode: bool = True


# Each switch of FastPathConfig and the name a run prints for its path.
PATHS = {
    "lean_lora": "lean-lora",
    "padding_free": "padding-free",
    "trimmed_last_layer": "trimmed-last-layer",
    "own_decoder": "own-decoder",
    "packed_decode": "packed-decode",
}
COMPILED = "compiled-blocks"
_RECORD = "tunekit_fast_paths"


@dataclass
class FastPaths:
    """What :func:`enable_fast_paths` turned on (``on``, in the order of :data:`PATHS`) and, for every other
    path, why not (``off``: name -> reason)."""

    on: list[str] = field(default_factory=list)
    off: dict[str, str] = field(default_factory=dict)

    def uses(self, name: str) -> bool:
        return name in self.on

    def summary(self) -> str:
        """One line for the terminal, e.g. ``fast paths: lean-lora, padding-free; off: own-decoder (switched off)``."""
        text = "fast paths: " + (", ".join(self.on) or "none")
        if self.off:
            text += "; off: " + "; ".join(f"{name} ({why})" for name, why in self.off.items())
        return text

    def resolved(self, config: FastPathConfig) -> FastPathConfig:
        """``config`` with every path that did not turn on set to false: what config.yaml records of the run."""
        if not config.enabled:
            return config
        switches = {key: PATHS[key] in self.on for key in PATHS if PATHS[key] in self.on or PATHS[key] in self.off}
        return replace(config, **switches)


PLAIN = FastPaths()


def enable_fast_paths(
    model: torch.nn.Module,
    config: FastPathConfig,
    compile: bool = False,
    generates: bool = True,
    device: str | None = None,
) -> FastPaths:
    """Turn on the paths ``config`` allows that apply to ``model`` (a transformers model or a peft wrapper of one,
    loaded and adapted, not yet wrapped by accelerate); ``compile`` is ``train.compile``, and ``generates`` says
    whether the run samples from the model (without it the decoding paths are left out of the record). ``device``
    is where the model will run (default: the GPU when there is one, as the runner places it). Returns the record,
    which is also kept on the model for :func:`fast_paths_of`. Call it once per model, and copy a model (a frozen
    reference) before, not after: a compiled block keeps the block it was compiled from."""
    from tunekit.fast import compiled, decode, last_layer, lean_lora, varlen
    from tunekit.fast.internals import broken_assumptions

    paths = FastPaths()
    if not config.enabled:
        paths.off = {name: "model.fast_paths.enabled=false" for name in _relevant(generates)}
        if compile:
            raise ConfigError("train.compile=true needs model.fast_paths.enabled=true")
        _keep(model, paths)
        return paths
    broken = broken_assumptions()
    on_gpu = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()

    def attempt(key: str, why_not: str | None, turn_on: Any = None) -> bool:
        name = PATHS[key]
        if not getattr(config, key):
            paths.off[name] = f"model.fast_paths.{key}=false"
        elif name in broken:
            paths.off[name] = broken[name]
        elif why_not is not None:
            paths.off[name] = why_not
        elif turn_on is not None and (refused := turn_on()) is not None:
            paths.off[name] = refused
        else:
            paths.on.append(name)
            return True
        return False

    # Without any adapter (full fine-tuning, a merged model) there is nothing for the lean forward to replace.
    no_adapter = "no adapter (every weight is the model's own)" if not getattr(model, "peft_config", None) else None
    no_plain = "no plain LoRA layer (DoRA and other variants keep peft's forward)"
    attempt("lean_lora", no_adapter, lambda: None if lean_lora.use_lean_forward(model) else no_plain)
    padding_free = attempt("padding_free", varlen.unsupported(model, on_gpu), lambda: varlen.enable(model))
    if not padding_free:
        trimmed_refusal = "needs padding-free"
    elif on_gpu:
        trimmed_refusal = "a CPU path (the GPU keeps flash varlen attention for the whole layer)"
    else:
        trimmed_refusal = last_layer.unsupported(model)
    attempt("trimmed_last_layer", trimmed_refusal, lambda: last_layer.install(model))
    if generates:
        own_decoder = attempt("own_decoder", decode.unsupported(model))
        packed_refusal = None
        if not own_decoder:
            packed_refusal = "needs own-decoder"
        elif on_gpu or not torch.backends.mkldnn.is_available():
            packed_refusal = "a CPU path with oneDNN"
        elif (dtype := _weights_dtype(model)) != torch.float32:
            packed_refusal = f"packs fp32 weights; the model's are {dtype}"
        attempt("packed_decode", packed_refusal)
    if compile:
        if COMPILED in broken:
            raise ConfigError(f"train.compile=true cannot run here: {broken[COMPILED]}")
        compiled.check_compile_supported()
        blocks = compiled.compile_layers(model)
        if blocks:
            paths.on.append(COMPILED)
        else:
            paths.off[COMPILED] = "the model has no transformer blocks to compile"
    _keep(model, paths)
    return paths


def _weights_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the model's floating-point weights (the first found; 4-bit weights are stored as integers)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point() and not p.requires_grad), None) or next(
        (p.dtype for p in model.parameters() if p.is_floating_point()), None
    )


def _relevant(generates: bool) -> list[str]:
    decoding = ("own-decoder", "packed-decode")
    return [name for name in PATHS.values() if generates or name not in decoding]


def fast_paths_of(model: torch.nn.Module) -> FastPaths:
    """The record :func:`enable_fast_paths` kept on ``model`` (or the model it wraps); :data:`PLAIN` if none."""
    return getattr(_base(model), _RECORD, PLAIN)


def _keep(model: torch.nn.Module, paths: FastPaths) -> None:
    setattr(_base(model), _RECORD, paths)


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a DDP and / or peft wrapper."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


_NOTED: set[str] = set()


def note_once(path: str, message: str) -> None:
    """Tell the user, once per process and on the main process only, that ``path`` stood down for a call."""
    text = f"fast path {path}: {message}"
    if text in _NOTED:
        return
    _NOTED.add(text)
    if os.environ.get("RANK", "0") == "0":
        print(text, file=sys.stderr, flush=True)
