"""The private internals of torch, transformers and peft that the fast paths rely on, listed in one place.

Each :class:`Assumption` names the path that relies on it, the library, what is assumed and a check of it. The
checks are structural (a name, an attribute, an operator exists) except lean-lora's, which runs peft's LoRA forward
and the lean one on a 4 x 4 layer and compares them. :func:`broken_assumptions` runs them once per process; a path
whose assumption fails is left off by :func:`tunekit.fast.enable_fast_paths`, with the failure as the reason, and
``tests/fast/test_internals.py`` fails loudly, naming the library, what broke and the versions tested.

Upgrading torch, transformers or peft: run that test first. ``TESTED`` holds the versions every check passed on.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

TESTED = {"torch": "2.13.0", "transformers": "5.25.0", "peft": "0.21.2"}

# The attention and MLP classes the own decoder and the trimmed last layer compute themselves, by modeling module.
ATTENTION_CLASSES = {"llama": "LlamaAttention", "mistral": "MistralAttention", "qwen2": "Qwen2Attention"}
MLP_CLASSES = {"llama": "LlamaMLP", "mistral": "MistralMLP", "qwen2": "Qwen2MLP"}


@dataclass(frozen=True)
class Assumption:
    path: str  # the fast path that relies on it (tunekit.fast.PATHS' names, or compiled-blocks)
    library: str
    what: str
    holds: Callable[[], bool]


def _attribute(module: str, *names: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            target = importlib.import_module(module)
        except ImportError:
            return False
        for name in names:
            if not hasattr(target, name):
                return False
        return True

    return check


def _modeling_classes() -> bool:
    for model_type, attention in ATTENTION_CLASSES.items():
        if not _attribute(
            f"transformers.models.{model_type}.modeling_{model_type}", attention, MLP_CLASSES[model_type]
        )():
            return False
    return True


def _rotate_half() -> bool:
    return all(
        _attribute(f"transformers.models.{t}.modeling_{t}", "rotate_half")() for t in ("llama", "mistral", "qwen2")
    )


def _mkldnn_ops() -> bool:
    try:
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018  (looking an op up is the check)
        torch.ops.mkldnn._linear_pointwise  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _dynamic_cache_layers() -> bool:
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return False
    return hasattr(DynamicCache(), "layers") and {"keys", "values"} <= set(vars(DynamicLayer()))


def _logits_to_keep() -> bool:
    import inspect

    from transformers import LlamaForCausalLM

    return "logits_to_keep" in inspect.signature(LlamaForCausalLM.forward).parameters


def _lean_lora_matches_peft() -> bool:
    """peft's LoRA Linear keeps the attributes the lean forward reads, and both forwards agree on a 4 x 4 layer."""
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear

    from tunekit.fast.lean_lora import lean_forward

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # building layers draws their initial weights: keep the run's stream
        layer = Linear(torch.nn.Linear(4, 4), "default", config=LoraConfig(r=2, lora_alpha=4), r=2, lora_alpha=4)
    needed = ("lora_A", "lora_B", "lora_dropout", "scaling", "base_layer", "lora_variant", "_cast_input_dtype")
    if not all(hasattr(layer, name) for name in needed) or not isinstance(layer.lora_variant, dict):
        return False
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(torch.randn(4, 2, generator=generator))
    x = torch.randn(3, 4, generator=generator)
    return torch.allclose(lean_forward(layer, x), type(layer).forward(layer, x), atol=1e-6)


ASSUMPTIONS = (
    Assumption(
        "lean-lora",
        "peft",
        "LoRA Linear layers keep lora_A/lora_B/scaling/lora_variant and compute base(x) + scaling * B(A(dropout(x)))",
        _lean_lora_matches_peft,
    ),
    Assumption(
        "padding-free",
        "transformers",
        "attention is chosen by name through AttentionInterface, with masks "
        "from masking_utils (sdpa_mask, ALL_MASK_ATTENTION_FUNCTIONS) and sdpa_attention_forward",
        lambda: (
            _attribute("transformers", "AttentionInterface")()
            and _attribute("transformers.masking_utils", "sdpa_mask", "ALL_MASK_ATTENTION_FUNCTIONS")()
            and _attribute("transformers.integrations.sdpa_attention", "sdpa_attention_forward")()
        ),
    ),
    Assumption("padding-free", "transformers", "causal LMs take logits_to_keep", _logits_to_keep),
    Assumption("trimmed-last-layer", "transformers", "modeling_llama/mistral/qwen2 define rotate_half", _rotate_half),
    Assumption(
        "trimmed-last-layer",
        "transformers",
        "the LLaMA, Mistral and Qwen2 attention and MLP classes keep their names",
        _modeling_classes,
    ),
    Assumption(
        "own-decoder",
        "transformers",
        "the LLaMA, Mistral and Qwen2 attention and MLP classes keep their names",
        _modeling_classes,
    ),
    Assumption(
        "own-decoder", "transformers", "DynamicCache holds per-layer keys and values in .layers", _dynamic_cache_layers
    ),
    Assumption(
        "packed-decode", "torch", "torch.ops.mkldnn._reorder_linear_weight and _linear_pointwise exist", _mkldnn_ops
    ),
    Assumption(
        "compiled-blocks",
        "transformers",
        "decoder blocks derive from GradientCheckpointingLayer",
        _attribute("transformers.modeling_layers", "GradientCheckpointingLayer"),
    ),
    Assumption(
        "compiled-blocks",
        "torch",
        "torch._dynamo has config.recompile_limit, mark_static and maybe_mark_dynamic",
        lambda: (
            hasattr(torch._dynamo.config, "recompile_limit")
            and _attribute("torch._dynamo", "mark_static", "maybe_mark_dynamic")()
        ),
    ),
)


@functools.cache
def broken_assumptions() -> dict[str, str]:
    """Path name -> why it cannot run on the installed libraries, for every path with a failed assumption."""
    broken: dict[str, str] = {}
    for assumption in ASSUMPTIONS:
        try:
            holds = assumption.holds()
        except Exception as err:  # a check that crashes is a broken assumption, not a crashed run
            holds = False
            detail = f" ({type(err).__name__}: {err})"
        else:
            detail = ""
        if not holds and assumption.path not in broken:
            broken[assumption.path] = (
                f"{assumption.library} {installed_version(assumption.library)} no longer holds what it relies on: "
                f"{assumption.what}{detail} (tested with {assumption.library} {TESTED[assumption.library]})"
            )
    return broken


def installed_version(library: str) -> str:
    return importlib.import_module(library).__version__
