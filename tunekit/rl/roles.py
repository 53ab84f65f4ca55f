"""PPO's four roles — actor, critic, reference and reward model — on ONE copy of the base weights.

Every role is the shared base plus what sets it apart, switched in for its forward pass:

=========  ==========================================  ===========  ==============================
role       adapter active in the base                  head         trained
=========  ==========================================  ===========  ==============================
actor      "default" (fresh, or an SFT run's adapter)  lm_head      yes
critic     "critic" (fresh LoRA)                       value_head   yes (adapter and head)
reference  none (adapters off), or "reference": a       lm_head      no
           frozen copy of the SFT adapter the actor
           continues
reward     "reward" (the reward run's LoRA)            reward_head  no
=========  ==========================================  ===========  ==============================

The value head and the reward model's score head are small ``Linear(hidden, 1)`` modules attached to the peft
model, so the runner's optimizer, checkpoints and device placement see them like any other parameter.

peft's ``set_adapter`` and ``disable_adapter`` also change which adapter weights require gradients (only the
active one stays trainable). Actor and critic are trained in the same optimizer step, one forward each, so every
switch here puts ``requires_grad`` back on both before returning.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tunekit.errors import ConfigError, ModelError, require
from tunekit.models.adapters import count_parameters
from tunekit.models.load import ModelConfig, adapter_base, adapter_dir, resolve_model_path
from tunekit.models.reference import REFERENCE_ADAPTER, unwrap

ACTOR = "default"
CRITIC = "critic"
REWARD = "reward"
Role = Literal["actor", "critic", "reference", "reward"]


@dataclass
class CriticConfig:
    # LoRA rank of the critic's adapter on the shared base.
    r: int = 8
    # LoRA alpha of the critic's adapter (its update is scaled by alpha / r).
    alpha: int = 16
    # A small adapter is enough: the value head reads the critic's last hidden state, and every adapter here
    # adds to the one shared base (see docs/ppo.md for the parameter budget).
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        require(self.r >= 1, "r", f"must be at least 1, got {self.r}")
        require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        require(bool(self.target_modules), "target_modules", "is empty; name the linear layers the critic adapts")


def same_base(a: str, b: str) -> bool:
    """Whether two base-model names refer to the same weights (embedded names and local paths resolved)."""
    a, b = resolve_model_path(a), resolve_model_path(b)
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def policy_base(path: str) -> str:
    """The base weights under ``model.path``: an adapter directory's recorded base, or the path itself."""
    earlier = adapter_dir(path)
    return adapter_base(earlier) if earlier else path


def check_shared_adapter(model: ModelConfig) -> None:
    """Refuse, before anything loads, a policy that :class:`SharedRoles` cannot share: one trained other than through
    LoRA or DoRA adapters."""
    if model.adapter.method not in ("lora", "dora"):
        raise ConfigError(
            f"model.adapter.method={model.adapter.method}: tunekit's PPO shares one base between actor, "
            "critic, reference and reward model through LoRA adapters (peft keeps one adapter type per model); "
            "use lora or dora (with model.quantization=4bit for QLoRA)"
        )


def check_reward_model(reward_model: str, model_path: str) -> None:
    """Refuse a ``reward_model`` that :class:`SharedRoles` cannot load beside the policy at ``model_path``: it must
    be a reward run's LoRA adapter (with its score head) on the same base weights."""
    if adapter_dir(reward_model) is None:
        raise ModelError(
            f"reward_model {reward_model!r} is not an adapter directory (no adapter_config.json); PPO shares "
            "the reward recipe's LoRA final/ with the policy's base"
        )
    saved = json.loads((Path(reward_model) / "adapter_config.json").read_text())
    if saved.get("task_type") != "SEQ_CLS":
        raise ModelError(
            f"reward_model {reward_model!r} holds a {saved.get('task_type')} adapter, not a reward model (a "
            "sequence-classification adapter with a score head, as `python -m tunekit.recipes.reward` writes)"
        )
    reward_base, base = policy_base(reward_model), policy_base(model_path)
    if not same_base(reward_base, base):
        raise ModelError(
            f"reward_model {reward_model!r} was trained on base {reward_base!r}, but the policy's base is {base!r}; "
            "train the reward model on the policy's base (model.path of the reward recipe)"
        )


class SharedRoles:
    """Switches one peft model between the four roles; see the module docstring."""

    def __init__(self, model: torch.nn.Module, critic: CriticConfig, reward_dir: str | None) -> None:
        from peft import LoraConfig

        peft_model = unwrap(model)
        if not getattr(peft_model, "peft_config", None):
            raise ModelError("PPO with shared weights needs an adapter policy; full fine-tuning is not shared")
        hidden = peft_model.get_base_model().config.hidden_size
        device = next(peft_model.parameters()).device
        dtype = next(p for p in peft_model.parameters() if p.is_floating_point()).dtype
        self.reference_kind = "reference_adapter" if REFERENCE_ADAPTER in peft_model.peft_config else "adapter_disabled"

        available = _adapted_module_names(peft_model)
        missing = [t for t in critic.target_modules if t not in available]
        if missing:
            raise ModelError(
                f"critic.target_modules {missing} match no linear layer of this model; its linear layers are: "
                f"{', '.join(available)}"
            )
        peft_model.add_adapter(
            CRITIC, LoraConfig(r=critic.r, lora_alpha=critic.alpha, target_modules=list(critic.target_modules))
        )
        # Starts at 0: the first value targets are the returns themselves, and a zero critic cannot mislead GAE.
        peft_model.value_head = torch.nn.Linear(hidden, 1, device=device, dtype=torch.float32)
        torch.nn.init.zeros_(peft_model.value_head.weight)
        torch.nn.init.zeros_(peft_model.value_head.bias)
        if reward_dir is not None:
            peft_model.reward_head = load_reward_adapter(peft_model, reward_dir, dtype)
        self.has_reward = reward_dir is not None
        self._set(peft_model, ACTOR)
        self.trainable = [
            p for name, p in peft_model.named_parameters() if _is_trainable(name)
        ]  # actor adapter, critic adapter, value head
        for p in self.trainable:
            p.requires_grad_(True)

    @contextmanager
    def acting(self, model: torch.nn.Module, role: Role) -> Iterator[None]:
        """Run the body with ``role``'s weights switched in; the actor is active again afterwards."""
        peft_model = unwrap(model)
        try:
            if role == "reference" and self.reference_kind == "adapter_disabled":
                with peft_model.disable_adapter():
                    yield
            else:
                name = {"actor": ACTOR, "critic": CRITIC, "reward": REWARD, "reference": REFERENCE_ADAPTER}[role]
                self._set(peft_model, name)
                yield
        finally:
            self._set(peft_model, ACTOR)

    def _set(self, peft_model: Any, name: str) -> None:
        peft_model.base_model.set_adapter(name, inference_mode=True)
        for p in getattr(self, "trainable", []):
            p.requires_grad_(True)

    def describe(self, model: torch.nn.Module) -> str:
        """One line on the shared base: its parameters, those trained, and what the reference is."""
        counts = count_parameters(model)
        return (
            f"actor, critic, reference and reward on one base: {counts['total']:,} parameters, "
            f"{counts['trainable']:,} trained (reference: {self.reference_kind})"
        )

    def values(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Critic values [B, T-1]: position t holds V(tokens <= t), the value before choosing token t + 1."""
        with self.acting(model, "critic"):
            hidden = _last_hidden(model, batch)
        return unwrap(model).value_head(hidden[:, :-1].float()).squeeze(-1)

    @torch.no_grad()
    def reward_scores(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B] reward-model scores, read at each row's last real token (as the reward recipe trains them)."""
        with self.acting(model, "reward"):
            hidden = _last_hidden(model, batch)
        mask = batch["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask).argmax(-1)
        rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return unwrap(model).reward_head(rows.float()).squeeze(-1)


def _adapted_module_names(peft_model: Any) -> list[str]:
    """Short names of the linear layers an adapter can target in a peft model (its own LoRA layers excluded)."""
    names = set()
    for name, module in peft_model.get_base_model().named_modules():
        kind = type(module).__name__
        if (isinstance(module, torch.nn.Linear) or kind in ("Linear4bit", "Linear8bitLt")) and "lora_" not in name:
            short = name.removesuffix(".base_layer").rsplit(".", 1)[-1]
            if short not in ("lm_head", "score"):
                names.add(short)
    return sorted(names)


def _is_trainable(name: str) -> bool:
    return name.startswith("value_head.") or any(f".{a}." in name for a in (ACTOR, CRITIC)) and "lora_" in name


def _last_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    return model(**inputs, output_hidden_states=True).hidden_states[-1]


def load_reward_adapter(peft_model: Any, reward_dir: str, dtype: torch.dtype) -> torch.nn.Linear:
    """Add a reward run's LoRA as the frozen adapter "reward"; returns its score head as a frozen Linear."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(reward_dir)
    config_file = directory / "adapter_config.json"
    weights_file = directory / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise ModelError(
            f"reward_model {reward_dir!r} is not a reward run's adapter directory (adapter_config.json and "
            "adapter_model.safetensors are needed; it is the final/ of `python -m tunekit.recipes.reward`)"
        )
    saved = json.loads(config_file.read_text())
    if saved.get("peft_type") != "LORA" or saved.get("task_type") != "SEQ_CLS":
        raise ModelError(
            f"reward_model {reward_dir!r} holds a {saved.get('peft_type')} adapter for task "
            f"{saved.get('task_type')}; PPO shares LoRA reward models trained by the reward recipe"
        )
    weights = load_file(str(weights_file))
    head_keys = [k for k in weights if k.rsplit(".", 2)[-2:-1] == ["score"]]
    if not head_keys:
        raise ModelError(f"reward_model {reward_dir!r} has no value (score) head in adapter_model.safetensors")
    fields = {k: v for k, v in saved.items() if k in LoraConfig.__dataclass_fields__}
    fields.update(task_type="CAUSAL_LM", modules_to_save=None, inference_mode=True)
    peft_model.add_adapter(REWARD, LoraConfig(**fields))
    result = set_peft_model_state_dict(
        peft_model, {k: v for k, v in weights.items() if k not in head_keys}, adapter_name=REWARD
    )
    unexpected = [k for k in result.unexpected_keys if REWARD in k or "lora_" in k]
    if unexpected:
        raise ModelError(f"reward_model {reward_dir!r} does not fit the policy's base: unexpected {unexpected[:3]}")
    head_weight = weights[next(k for k in head_keys if k.endswith("weight"))]
    head = torch.nn.Linear(head_weight.shape[1], head_weight.shape[0], bias=False)
    head.weight.data.copy_(head_weight)
    head.requires_grad_(False)
    device = next(peft_model.parameters()).device
    return head.to(device=device, dtype=torch.float32)
