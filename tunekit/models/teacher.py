"""The teacher of a distillation run: a frozen causal LM that shares the student's vocabulary.

The teacher only ever runs forwards without gradients, so it is loaded once, frozen, and kept out of the
optimizer, the checkpoints and the accelerate wrapping: a resumed run loads it again from its path. It may be
stored in bf16, fp16 or 4-bit/8-bit (bitsandbytes) to save memory; its logits are compared in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from tunekit.errors import ConfigError, require
from tunekit.fast import FastPathConfig, enable_fast_paths
from tunekit.models.load import ModelConfig, load_model


@dataclass
class TeacherConfig:
    # The teacher: a hub id, a local directory, an embedded model, or an earlier run's final/ (an adapter is merged
    # into the base it records). The default is the SFT warm start (tiny-llama fully fine-tuned on the generated
    # arithmetic) that `python -m tunekit.recipes.sft --config recipes/sft/tiny-warmstart.yaml` writes.
    path: str = "runs/sft-warmstart/final"
    # Dtype the teacher is stored and run in; bf16 halves its memory.
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Store the teacher in 4-bit NF4 or 8-bit through bitsandbytes (it is never trained, so nothing is lost but its
    # own accuracy).
    quantization: Literal["none", "4bit", "8bit"] = "none"
    # Attention kernel of the teacher's forwards: sdpa, or eager (plain matmuls; for comparisons and debugging).
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # Run code shipped inside the teacher's hub repository. Off unless you trust its author.
    trust_remote_code: bool = False
    # Branch, tag or commit of a hub teacher (null: the default branch).
    revision: str | None = None

    def __post_init__(self) -> None:
        require(bool(self.path.strip()), "path", "is empty; give the teacher's directory, hub id or run's final/")

    def model_config(self, fast_paths: FastPathConfig) -> ModelConfig:
        """The teacher as a :class:`ModelConfig` (no adapter: it is not trained)."""
        return ModelConfig(
            path=self.path,
            dtype=self.dtype,
            quantization=self.quantization,
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
            revision=self.revision,
            fast_paths=fast_paths,
        )


def load_teacher(config: TeacherConfig, fast_paths: FastPathConfig) -> torch.nn.Module:
    """The teacher in eval mode with every parameter frozen, and the fast paths ``fast_paths`` allows for a model
    that only scores (no decoding paths). Placed where the student runs by :func:`place_teacher`."""
    teacher = load_model(config.model_config(fast_paths)).eval()
    teacher.requires_grad_(False)
    enable_fast_paths(teacher, fast_paths, generates=False)
    return teacher


def place_teacher(teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    """Move the teacher onto the device the (prepared) student's parameters are on. A bitsandbytes-quantized
    teacher was placed when it loaded and stays where it is."""
    device = next(student.parameters()).device
    if not getattr(teacher, "is_quantized", False) and next(teacher.parameters()).device != device:
        teacher.to(device)


def check_shared_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any, teacher: str, student: str) -> None:
    """Refuse a teacher whose tokenizer maps any token to another id than the student's, naming a few of them.

    Distillation compares the two models' distributions id by id: with different vocabularies id 17 would be one
    token for the teacher and another for the student, and the loss would be meaningless rather than failing.
    """
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab == student_vocab:
        return
    only_teacher = sorted(set(teacher_vocab) - set(student_vocab), key=teacher_vocab.__getitem__)
    moved = sorted(
        (t for t in set(teacher_vocab) & set(student_vocab) if teacher_vocab[t] != student_vocab[t]),
        key=teacher_vocab.__getitem__,
    )
    only_student = sorted(set(student_vocab) - set(teacher_vocab), key=student_vocab.__getitem__)
    examples = [f"{t!r} is id {teacher_vocab[t]} in the teacher and {student_vocab[t]} in the student" for t in moved]
    examples += [f"{t!r} (id {teacher_vocab[t]}) is only in the teacher" for t in only_teacher[:2]]
    examples += [f"{t!r} (id {student_vocab[t]}) is only in the student" for t in only_student[:2]]
    raise ConfigError(
        f"teacher.path {teacher!r} and model.path {student!r} do not share a vocabulary ({len(teacher_vocab)} and "
        f"{len(student_vocab)} tokens; {len(moved)} shared tokens have other ids); e.g. {'; '.join(examples[:3])}. "
        "Distillation compares the two models token id by token id: use a student with the teacher's tokenizer"
    )


def shared_logit_width(teacher: torch.nn.Module, student: torch.nn.Module, vocabulary: int) -> int:
    """How many logit columns the loss compares: both models' output widths may be padded past the tokenizer's
    ``vocabulary`` (e.g. to a multiple of 64), and such padding columns are no token either model can emit. The
    narrower width is used; it must cover every token."""
    widths = {
        "teacher": teacher.get_output_embeddings().weight.shape[0],
        "student": student.get_output_embeddings().weight.shape[0],
    }
    narrowest = min(widths.values())
    if narrowest < vocabulary:
        raise ConfigError(
            f"the {min(widths, key=widths.__getitem__)}'s output layer has {narrowest} logits but the tokenizer "
            f"has {vocabulary} tokens; teacher and student must both score every token"
        )
    return narrowest
