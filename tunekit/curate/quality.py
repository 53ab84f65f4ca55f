"""Optional quality scores: a reward model's score, or the negative perplexity under a reference model.

Higher is better for both, so that "keep the top fraction" reads the same way: a reward model prefers what it
was trained to prefer; a reference model's low perplexity marks fluent, ordinary text (and its very high
perplexity marks noise, encoding debris and text in another script).
"""

from __future__ import annotations

import math
from typing import Any

import torch


class Scorer:
    """Scores texts in batches with ``method`` ("reward" or "perplexity") using the model at ``path``."""

    def __init__(self, method: str, path: str, batch_size: int, max_length: int) -> None:
        from tunekit.models.load import load_tokenizer

        self.method = method
        self.batch_size = batch_size
        self.max_length = max_length
        if method == "reward":
            from tunekit.models.reward import RewardScorer

            self.reward = RewardScorer.from_pretrained(path, batch_size=batch_size, max_length=max_length)
        else:
            from tunekit.models.load import ModelConfig, load_model

            self.tokenizer = load_tokenizer(path)
            self.model = load_model(ModelConfig(path=path)).eval()

    def __call__(self, texts: list[str]) -> list[float]:
        """One score per text, higher is better."""
        if self.method == "reward":
            return self.reward.score_texts(texts)
        return [-math.exp(nll) for nll in self._mean_nll(texts)]

    @torch.no_grad()
    def _mean_nll(self, texts: list[str]) -> list[float]:
        """Mean next-token negative log-likelihood (nats per token) of each text, after a BOS, cut at max_length."""
        bos = self.tokenizer.bos_token_id
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            encoded: list[list[int]] = []
            for text in texts[start : start + self.batch_size]:
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                encoded.append(([bos] if bos is not None else []) + ids)
            encoded = [ids[: self.max_length] for ids in encoded]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for b, ids in enumerate(encoded):
                input_ids[b, : len(ids)] = torch.tensor(ids)
                mask[b, : len(ids)] = 1
            logits: Any = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            valid = mask[:, 1:].float()
            # A text of one token (or none) has nothing predicted: it scores as the worst possible.
            counts = valid.sum(-1)
            nll = -(logp * valid).sum(-1) / counts.clamp(min=1)
            out.extend(float(v) if c > 0 else math.inf for v, c in zip(nll.tolist(), counts.tolist(), strict=True))
        return out
