"""Adapter methods through peft (LoRA, DoRA, IA3, prompt and prefix tuning, LLaMA-Adapter) or full fine-tuning."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tunekit.errors import ConfigError, ModelError, require

# Methods that train inputs to attention (virtual tokens, key/value prefixes, adaption prompts) rather than
# changes to weights: they cannot be merged into the base, and they change what attention sees.
PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "llama_adapter")
# What each prompt method trains, for messages.
TRAINS = {
    "prompt_tuning": "virtual input tokens",
    "prefix_tuning": "key/value prefixes",
    "llama_adapter": "adaption prompts",
}


@dataclass
class AdapterConfig:
    """One config for every method; each key says which methods read it, the others ignore it.

    ``lora`` / ``dora``: low-rank updates of ``target_modules`` (``r``, ``alpha``, ``dropout``, ``use_rslora``).
    ``ia3``: learned per-channel scales on ``target_modules`` (``feedforward_modules`` among them).
    ``prompt_tuning``: ``num_virtual_tokens`` trained input embeddings before every sequence.
    ``prefix_tuning``: ``num_virtual_tokens`` trained keys and values in front of every layer's attention.
    ``llama_adapter``: ``num_virtual_tokens`` adaption-prompt tokens with a zero-initialised gate, in the top
    ``adapter_layers`` layers (LLaMA-Adapter; LLaMA-, Mistral- and GPT-2-style models).
    ``full``: every weight trained, no adapter.
    """

    # What is trained: lora, dora (LoRA plus a learned magnitude per output channel), ia3 (learned per-channel scales),
    # prompt_tuning, prefix_tuning or llama_adapter (virtual tokens; see docs/adapters.md), or full (every weight, no
    # adapter).
    method: Literal["lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "llama_adapter", "full"] = "lora"
    # lora, dora: rank of the low-rank update; trainable parameters grow linearly with it.
    r: int = 8
    # lora, dora: the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora).
    alpha: int = 16
    # lora, dora: dropout probability on the adapter's input during training (0: none).
    dropout: float = 0.0
    # lora, dora, ia3: module names (matched against the last part of each module's name, e.g. q_proj) or
    # ["all-linear"]. lora: a mixture-of-experts model's fused expert weights (3-D, one slice per expert) are named by
    # module and parameter, e.g. experts.gate_up_proj, or all of them by experts; all-linear includes them.
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # lora, dora: scale by alpha / sqrt(r) instead of alpha / r (rsLoRA).
    use_rslora: bool = False
    # ia3: the target modules whose input is scaled (the feed-forward down projection, as in the IA3 paper);
    # every other target has its output scaled.
    feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"])
    # prompt_tuning, prefix_tuning: trained tokens in front of every sequence; llama_adapter: adaption-prompt
    # tokens per adapted layer.
    num_virtual_tokens: int = 16
    # llama_adapter: how many layers, counted from the top, get adaption prompts (null: every layer).
    adapter_layers: int | None = None

    def __post_init__(self) -> None:
        require(self.r >= 1, "r", f"must be at least 1, got {self.r}")
        require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        tokens = self.num_virtual_tokens
        require(tokens >= 1, "num_virtual_tokens", f"must be at least 1, got {tokens}")
        require(
            self.adapter_layers is None or self.adapter_layers >= 1,
            "adapter_layers",
            f"must be at least 1 (or null for every layer), got {self.adapter_layers}",
        )


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Sorted short names of the linear layers an adapter can target (output heads excluded)."""
    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Linear4bit", "Linear8bitLt"):
            short = name.rsplit(".", 1)[-1]
            if short not in ("lm_head", "score"):
                names.add(short)
    return sorted(names)


def expert_parameter_names(model: torch.nn.Module) -> list[str]:
    """Sorted ``<module>.<parameter>`` names (e.g. ``experts.gate_up_proj``) of the fused expert weights of a
    mixture-of-experts model: the 3-D parameters ``[experts, ., .]`` that transformers 5 stores each MoE layer's
    experts in, which no Linear layer holds and ``all-linear`` therefore misses. Empty for a dense model."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if param.ndim == 3 and "lora_" not in param_name:
                names.add(f"{module_name.rsplit('.', 1)[-1]}.{param_name}")
    return sorted(names)


def apply_adapter(
    model: torch.nn.Module,
    config: AdapterConfig,
    head: Literal["causal-lm", "score"] = "causal-lm",
    gradient_checkpointing: bool = False,
) -> torch.nn.Module:
    """Wrap ``model`` with the adapter of ``config`` (or unfreeze it for ``full``); returns the trainable model.

    For a score head, the head itself is always trained and saved with the adapter.
    """
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if config.method == "full":
        if quantized:
            raise ModelError(
                "model.adapter.method=full cannot train quantised weights; use an adapter method with quantization, "
                "or set model.quantization=none"
            )
        for param in model.parameters():
            param.requires_grad_(True)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    from peft import get_peft_model, prepare_model_for_kbit_training

    peft_config = build_peft_config(model, config, head)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)


def build_peft_config(model: torch.nn.Module, config: AdapterConfig, head: str = "causal-lm") -> Any:
    """The peft config of ``config.method`` for ``model``; a :class:`ModelError` for settings the model cannot take."""
    import peft

    task_type = "SEQ_CLS" if head == "score" else "CAUSAL_LM"
    modules_to_save = ["score"] if head == "score" else None
    if config.method in ("lora", "dora"):
        experts = _expert_targets(model, config)
        if experts and (config.method == "dora" or config.dropout):
            dora = config.method == "dora"
            setting = "model.adapter.method=dora" if dora else f"model.adapter.dropout={config.dropout}"
            raise ModelError(
                f"{setting} cannot adapt this mixture-of-experts model's fused expert weights ({', '.join(experts)}): "
                "peft adds LoRA to them as weight updates, with no room for DoRA's magnitudes or for dropout on the "
                "input. Use lora with dropout 0, or name target_modules without the experts"
            )
        return peft.LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=_targets(model, config),
            target_parameters=experts or None,
            use_dora=config.method == "dora",
            use_rslora=config.use_rslora,
            task_type=task_type,
            modules_to_save=modules_to_save,
        )
    if config.method == "ia3":
        targets = _targets(model, config)
        outside = [m for m in config.feedforward_modules if m not in targets]
        if outside:
            raise ModelError(
                f"model.adapter.feedforward_modules {outside} are not among the target modules ({', '.join(targets)}); "
                "name target modules only, or [] to scale every target's output"
            )
        return peft.IA3Config(
            target_modules=targets,
            feedforward_modules=list(config.feedforward_modules),
            task_type=task_type,
            modules_to_save=modules_to_save,
        )
    if config.num_virtual_tokens < 1:
        raise ModelError(f"model.adapter.num_virtual_tokens must be at least 1 for {config.method}")
    if config.method == "prompt_tuning":
        # Start from the embeddings of random vocabulary tokens: a soft prompt on the scale of real inputs trains
        # far better than peft's default N(0, 1) initialisation.
        return peft.PromptTuningConfig(
            num_virtual_tokens=config.num_virtual_tokens, prompt_tuning_init="SAMPLE_VOCAB", task_type=task_type
        )
    if config.method == "prefix_tuning":
        return peft.PrefixTuningConfig(num_virtual_tokens=config.num_virtual_tokens, task_type=task_type)
    if config.method == "llama_adapter":
        # peft's adaption prompts know a few architectures only (the layout of their attention modules).
        from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

        model_type = getattr(model.config, "model_type", None)
        if model_type not in TRANSFORMERS_MODEL_CONFIG:
            raise ModelError(
                f"model.adapter.method=llama_adapter supports {', '.join(sorted(TRANSFORMERS_MODEL_CONFIG))} models "
                f"(peft's adaption prompts); this model is {model_type!r}"
            )
        layers = model.config.num_hidden_layers
        count = layers if config.adapter_layers is None else config.adapter_layers
        if not 1 <= count <= layers:
            raise ModelError(f"model.adapter.adapter_layers must be between 1 and {layers} (this model's layers)")
        return peft.AdaptionPromptConfig(
            adapter_len=config.num_virtual_tokens, adapter_layers=count, task_type=task_type
        )
    raise ModelError(f"unknown model.adapter.method {config.method!r}")


def _targets(model: torch.nn.Module, config: AdapterConfig) -> list[str]:
    """The short names of the linear layers ``config.target_modules`` selects; unknown names are an error."""
    available = linear_module_names(model)
    if config.target_modules == ["all-linear"]:
        return available
    experts = expert_parameter_names(model)
    expert_modules = {name.split(".")[0] for name in experts}
    missing = [t for t in config.target_modules if t not in available and t not in experts and t not in expert_modules]
    if missing:
        fused = f"; its fused expert weights: {', '.join(experts)}" if experts else ""
        raise ModelError(
            f"model.adapter.target_modules {missing} match no linear layer of this model; "
            f"its linear layers are: {', '.join(available)} (or use all-linear){fused}"
        )
    return [t for t in config.target_modules if t in available]


def _expert_targets(model: torch.nn.Module, config: AdapterConfig) -> list[str]:
    """The fused expert weights ``config.target_modules`` selects (all of them under all-linear), for peft's
    ``target_parameters``."""
    experts = expert_parameter_names(model)
    if config.target_modules == ["all-linear"]:
        return experts
    named = set(config.target_modules)
    return [name for name in experts if name in named or name.split(".")[0] in named]


def saved_adapter_method(directory: Path) -> str:
    """The ``model.adapter.method`` that wrote the peft adapter in ``directory`` (from its adapter_config.json)."""
    saved = json.loads((Path(directory) / "adapter_config.json").read_text())
    peft_type = saved.get("peft_type")
    if peft_type == "LORA":
        return "dora" if saved.get("use_dora") else "lora"
    methods = {"IA3": "ia3", "PROMPT_TUNING": "prompt_tuning", "PREFIX_TUNING": "prefix_tuning"}
    return methods.get(peft_type, "llama_adapter" if peft_type == "ADAPTION_PROMPT" else str(peft_type).lower())


def check_mergeable(directory: Path) -> None:
    """A :class:`ModelError` unless the adapter in ``directory`` can be merged into its base."""
    method = saved_adapter_method(directory)
    if method in PROMPT_METHODS:
        raise ModelError(
            f"{directory} holds a {method} adapter, which cannot be merged into its base: its trained "
            f"{TRAINS[method]} are extra inputs to attention, not changes to the base weights. Load it with "
            "peft.PeftModel.from_pretrained instead"
        )


def check_adapter_use(
    model: Any,
    head: Literal["causal-lm", "score"] = "causal-lm",
    packing: bool = False,
    left_padding: bool = False,
    earlier: Literal["merge", "continue"] = "merge",
) -> None:
    """Refuse an adapter method that cannot do what the recipe asks of it, before anything is loaded or written.

    ``model`` is the recipe's ModelConfig. The recipe says what it does: the ``head`` it trains, whether its
    batches are ``packed`` rows (a 4D block-diagonal mask) or ``left_padded`` (GRPO's rollouts), and what it does
    with an adapter directory given as ``model.path``: merge it into the base before adding a new adapter (sft,
    reward), or ``continue`` training it (dpo, grpo; then that adapter's own method is the one trained).
    """
    method = model.adapter.method
    previous = Path(model.path)
    if (previous / "adapter_config.json").is_file():
        saved = saved_adapter_method(previous)
        if earlier == "continue" and method != "full":
            method = saved
            if saved in ("prompt_tuning", "prefix_tuning"):
                raise ModelError(
                    f"model.path {model.path} holds a {saved} adapter, which this recipe would train further, and "
                    "peft cannot load a prompt-learning adapter as trainable. Start from the base model with a new "
                    "adapter (model.path=<base>), or train the earlier run with another method"
                )
        else:
            check_mergeable(previous)
    if method == "prefix_tuning" and model.gradient_checkpointing:
        raise ConfigError(
            "model.adapter.method=prefix_tuning cannot be combined with model.gradient_checkpointing=true: the "
            "prefixes enter every layer as a key/value cache, which peft does not allow under checkpointing"
        )
    if packing and method in ("prompt_tuning", "prefix_tuning"):
        raise ConfigError(
            f"model.adapter.method={method} cannot be combined with data.packing=true: peft widens a 2D attention "
            f"mask by its {TRAINS[method]}, and packed rows carry a 4D block-diagonal mask that keeps their examples "
            "apart. Set data.packing=false, or use lora, dora, ia3 or llama_adapter"
        )
    if head == "score" and method in ("prompt_tuning", "llama_adapter"):
        reason = {
            "prompt_tuning": "peft puts the virtual tokens in front of the score positions and drops position_ids, "
            "so the score read at the last real token would depend on padding",
            "llama_adapter": "peft's adaption prompts cannot train or save the score head (no modules_to_save)",
        }[method]
        raise ConfigError(
            f"model.adapter.method={method} cannot train a reward model: {reason}. Use lora, dora, ia3 or prefix_tuning"
        )
    if left_padding and method == "prompt_tuning":
        raise ConfigError(
            "model.adapter.method=prompt_tuning cannot be combined with this recipe's left-padded batches "
            "(rollouts): peft drops position_ids under prompt tuning, so each row's log-probs would depend on how "
            "much padding its batch needs. Use lora, dora, ia3, prefix_tuning or llama_adapter"
        )


def count_parameters(model: torch.nn.Module) -> dict[str, Any]:
    """Total and trainable parameter counts; ``experts``: how many of the trainable ones update fused expert
    weights (LoRA factors on them, or the weights themselves under full fine-tuning)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    experts = 0
    for module in model.modules():
        if type(module).__name__ == "ParamWrapper":  # peft's LoRA on one fused expert weight
            # A wrapper nests the wrapper of its module's other expert weight; count only its own factors.
            own = [*module.lora_A.parameters(), *module.lora_B.parameters()]
            experts += sum(p.numel() for p in own if p.requires_grad)
        else:
            experts += sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad and p.ndim == 3)
    return {"total": total, "trainable": trainable, "trainable_fraction": trainable / max(total, 1), "experts": experts}


def trained_summary(model: torch.nn.Module) -> str:
    """``"74,752 of 925,312 parameters trained"``, with how many of them are on fused expert weights when any are:
    the run's model line."""
    counts = count_parameters(model)
    text = f"{counts['trainable']:,} of {counts['total']:,} parameters trained"
    if counts["experts"]:
        text += f" ({counts['experts']:,} of them on the experts' fused weights)"
    return text
