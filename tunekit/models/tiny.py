"""The embedded tiny LLaMA- and Mistral-style models that default configs and tests run on.

They are built offline: a byte-level BPE tokenizer trained with ``tokenizers`` on tunekit's own generated text,
and a randomly initialised model with a fixed seed, saved in Hugging Face format. The first use builds and
caches them (about a second); later uses load the cached directory. Byte-level BPE means any text, including
real datasets, tokenizes without unknown tokens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TINY_MODELS = ("tiny-llama", "tiny-mistral", "tiny-mixtral", "tiny-qwen-moe", "tiny-llama-small")
# The architecture each embedded model is built as.
_ARCH = {
    "tiny-llama": "llama",
    "tiny-mistral": "mistral",
    "tiny-mixtral": "mixtral",
    "tiny-qwen-moe": "qwen2_moe",
    "tiny-llama-small": "llama",
}
# The default shape; tiny-llama-small, the distillation recipe's student, is half as wide and half as deep, with the
# same tokenizer, so that a tiny-llama teacher and it share a vocabulary.
_SHAPE = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
_SMALL_SHAPE = dict(
    hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
# Bump when the recipe below changes, so that old caches are not reused.
_VERSION = "v3"
# Without tools, a conversation renders as it always has. With the template's ``tools`` argument (JSON schemas), a
# system turn names each tool and its parameters, tersely, since every token of it is in every prompt; an assistant
# message's ``tool_calls`` are written in Hermes/Qwen's format, which tunekit.tools.calls parses.
DEFAULT_CHAT_TEMPLATE = (
    "{% if tools %}<|system|>\nTools:"
    "{% for tool in tools %}{% set f = tool.function if tool.function is defined else tool %}"
    " {{ f.name }}({{ (f.parameters.properties if f.parameters is defined else {}) | join(', ') }})"
    "{% endfor %}{{ eos_token }}\n{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{% if message['content'] is not none %}{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}{% set f = call.function if call.function is defined else call %}"
    '<tool_call>{"name": "{{ f.name }}", "arguments": '
    "{% if f.arguments is string %}{{ f.arguments }}{% else %}{{ f.arguments | tojson }}{% endif %}}</tool_call>"
    "{% endfor %}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEKIT_CACHE", Path.home() / ".cache" / "tunekit"))


def tiny_model_path(name: str) -> Path:
    """Directory of the embedded model ``name``, building it on first use."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODELS)}")
    return cached_model_dir(f"{name}-{_VERSION}", lambda out: build_tiny_model(name, out))


def cached_model_dir(key: str, build: Callable[[Path], None]) -> Path:
    """``<cache>/models/<key>``, written by ``build(directory)`` on first use.

    ``key`` must change whenever what ``build`` writes changes, so that old caches are not reused.
    """
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so that a killed build never leaves a half-written cache entry and
    # two processes building at once both end up with a complete directory.
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def train_tokenizer(vocab_size: int = 512, texts: list[str] | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (default: tunekit's generated text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tunekit.data import synthetic

    if texts is None:
        texts = [r["text"] for r in synthetic.text_corpus(3000, seed=1234, split="all")]
        texts += [f"{r['prompt']} {r['completion']}" for r in synthetic.sft_examples(2000, seed=4321, split="all")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    # Like LLaMA's tokenizer: a BOS token in front of every encoded text.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="right"
    )
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast


def build_tiny_model(name: str, out_dir: Path, seed: int = 0) -> None:
    """Write tokenizer and randomly initialised weights of tiny model ``name`` to ``out_dir``."""
    tokenizer = train_tokenizer()
    # Small enough for seconds-long CPU tests, big enough to learn the default tasks (a 64-wide, 2-layer
    # model could not learn the default preference pairs: about 65% held-out reward accuracy).
    shape = _SMALL_SHAPE if name == "tiny-llama-small" else _SHAPE
    build_causal_lm(out_dir, tokenizer, shape, arch=_ARCH[name], seed=seed)


def build_causal_lm(
    out_dir: Path,
    tokenizer: Any,
    shape: dict[str, int],
    arch: str = "llama",
    seed: int = 0,
    max_position_embeddings: int = 1024,
) -> None:
    """Write ``tokenizer`` and a randomly initialised (``seed``) model of ``arch`` to ``out_dir``: llama, mistral,
    or the mixture-of-experts mixtral and qwen2_moe.

    ``shape`` holds hidden_size, intermediate_size, num_hidden_layers, num_attention_heads and
    num_key_value_heads; the vocabulary is the tokenizer's, and input and output embeddings are not tied. The
    mixture-of-experts models route each token to 2 of 4 experts, each half as wide as ``intermediate_size``
    (Qwen-MoE adds a shared expert of full width), so that a token costs about what it costs the dense models.
    """
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
    )

    config = dict(
        vocab_size=len(tokenizer),
        **shape,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # Building may happen in the middle of a seeded run (first use); it must not move the run's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expert_width = shape["intermediate_size"] // 2
        experts = dict(num_experts_per_tok=2, output_router_logits=False)
        if arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(**config))
        elif arch == "mistral":
            model = MistralForCausalLM(MistralConfig(sliding_window=256, **config))
        elif arch == "mixtral":
            config["intermediate_size"] = expert_width
            model = MixtralForCausalLM(MixtralConfig(num_local_experts=4, **experts, **config))
        elif arch == "qwen2_moe":
            moe = dict(num_experts=4, moe_intermediate_size=expert_width, **experts)
            moe["shared_expert_intermediate_size"] = shape["intermediate_size"]
            model = Qwen2MoeForCausalLM(Qwen2MoeConfig(**moe, **config))
        else:
            raise ValueError(f"unknown architecture {arch!r}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
