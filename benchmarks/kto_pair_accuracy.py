"""Score a KTO (or DPO) run's implicit reward on held-out *pairs*, the measure the dpo recipe logs as
``eval/rewards/accuracy``: the share of pairs whose chosen completion gets a higher ``beta * (log pi - log ref)``
than the rejected completion of the same prompt.

    python benchmarks/kto_pair_accuracy.py runs/kto-tiny/final [--beta 0.2] [--pairs 200]

The pairs are the dpo and kto defaults' generated held-out pairs (seed 0), the reference is the base model with
the adapter off, and log-probs come from tunekit's own ``sequence_logps`` on ``collate_pairs`` batches: the same
numbers the dpo recipe's evaluation computes. KTO's own held-out metrics compare examples across prompts (it never
sees pairs); this puts its implicit reward on the dpo recipe's scale.
"""

from __future__ import annotations

import argparse
import json

import torch
from peft import PeftModel

from tunekit.data import synthetic
from tunekit.data.collate import collate_pairs
from tunekit.data.pairs import PairDataConfig, tokenize_pairs
from tunekit.data.sources import Rows
from tunekit.models.load import ModelConfig, load_model, load_tokenizer
from tunekit.models.logprobs import sequence_logps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", help="a run's final/ directory holding a LoRA adapter on tiny-llama")
    parser.add_argument("--beta", type=float, default=0.2)
    parser.add_argument("--pairs", type=int, default=200, help="held-out pairs (the defaults hold out 200)")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.adapter)
    rows = Rows("synthetic-eval", synthetic.preference_pairs(args.pairs, 10_000, "held_out"))
    pairs, _ = tokenize_pairs(rows, PairDataConfig(), tokenizer)
    model = PeftModel.from_pretrained(load_model(ModelConfig(path="tiny-llama")), args.adapter).eval()
    margins = []
    with torch.no_grad():
        for start in range(0, len(pairs), 16):
            batch = collate_pairs(pairs[start : start + 16], pad_id=tokenizer.pad_token_id)
            policy, _ = sequence_logps(model, batch)
            with model.disable_adapter():
                reference, _ = sequence_logps(model, batch)
            chosen, rejected = (args.beta * (policy - reference)).chunk(2)
            margins.append(chosen - rejected)
    margin = torch.cat(margins)
    print(
        json.dumps(
            {"pairs": len(margin), "accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}
        )
    )


if __name__ == "__main__":
    main()
