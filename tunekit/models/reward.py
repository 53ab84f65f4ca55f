"""Reward scores read at the last real token, and the scoring API that other recipes and users call.

transformers' sequence-classification models pool the score at the last token that is not the pad id. When the
pad token is the EOS token — common, since many tokenizers have no pad token — that pooling skips a trailing EOS
and reads the wrong position. tunekit therefore takes the per-token scores of the head itself and reads them at
the last position of the attention mask, with position ids counted over real tokens only, so the score of a
sequence does not depend on padding side, batch size or what else is in the batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunekit.data.formats import render_chat
from tunekit.data.pairs import keep_last


def _score_head(model: torch.nn.Module) -> torch.nn.Module:
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "score":
            return module  # the outermost one: peft's wrapper around the trained copy, when there is one
    raise ValueError("the model has no 'score' head; load it as a sequence-classification model with num_labels=1")


def last_token_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] ids and mask (left or right padded) -> [B] scores of the head at each sequence's last real token."""
    captured: list[torch.Tensor] = []
    handle = _score_head(model).register_forward_hook(lambda module, args, out: captured.append(out))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    finally:
        handle.remove()
    per_token = captured[-1].squeeze(-1)  # [B, T]
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask).argmax(-1)
    return per_token.gather(1, last[:, None]).squeeze(1).float()


class RewardScorer:
    """Scores texts, (prompt, completion) pairs or conversations with a trained reward model.

    ``RewardScorer.from_pretrained(run_dir / "final")`` loads a reward run's adapter and score head onto its
    base (or a merged export); ``score(prompts, completions)`` returns one float per pair.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 16, max_length: int = 1024):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "fp32", **kwargs: Any) -> RewardScorer:
        from tunekit.models.load import DTYPES, load_score_model, load_tokenizer

        model = load_score_model(str(path), DTYPES[dtype])
        return cls(model, load_tokenizer(str(path)), **kwargs)

    def score_texts(self, texts: list[str], add_bos: bool = True) -> list[float]:
        """One score per full text (prompt and response already joined)."""
        return self.score_ids([self._encode([text], add_bos) for text in texts])

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One score per (prompt, completion), tokenized as reward training tokenizes a pair: the prompt and the
        completion (with EOS) apart, so that no token straddles the seam."""
        eos = self.tokenizer.eos_token or ""
        return self.score_ids([self._encode([p, c + eos]) for p, c in zip(prompts, completions, strict=True)])

    def score_conversations(self, conversations: list[list[dict[str, str]]]) -> list[float]:
        """One score per conversation (a list of ``{"role", "content"}`` messages), rendered with the chat template
        and read at its last token; the template writes any BOS, as it did for reward training's chat pairs."""
        texts = [render_chat(messages, self.tokenizer, add_generation_prompt=False) for messages in conversations]
        return self.score_texts(texts, add_bos=False)

    def _encode(self, pieces: list[str], add_bos: bool = True) -> list[int]:
        """The pieces' tokens end to end, after one BOS (none added where a chat template already wrote it), cut to
        ``max_length`` from the left with that BOS kept in front."""
        ids = [token for piece in pieces for token in self.tokenizer(piece, add_special_tokens=False)["input_ids"]]
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return keep_last(ids, self.max_length, bos)

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, seq in enumerate(chunk):
                ids[b, : len(seq)] = torch.tensor(seq)
                mask[b, : len(seq)] = 1
            scores.extend(last_token_scores(self.model, ids.to(device), mask.to(device)).tolist())
        return scores


def is_reward_adapter(path: str | Path) -> bool:
    config = Path(path) / "adapter_config.json"
    return config.is_file() and json.loads(config.read_text()).get("task_type") == "SEQ_CLS"
