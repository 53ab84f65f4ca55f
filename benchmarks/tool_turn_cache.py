"""Multi-turn tool rollouts two ways side by side: later turns going on from the KV cache, and later turns reading
their whole context again.

    python benchmarks/tool_turn_cache.py [--model runs/grpo-tools/final] [--rounds 5] [--prompts 64]

The rollouts are those of the tool-use default (recipes/grpo/tiny-tools.yaml): held-out arithmetic questions,
4 samples each at temperature 1, up to 2 turns of 96 tokens, the calculator. The model should be one that calls
the tool (the default run's policy; run its two commands first), or there is no later turn to time. Each round
times one pass over the prompts each way (8 prompts a rollout), alternating which goes first, from the same seed;
the script prints the seconds of each way, their ratio, and whether the two ways sampled the same trajectories.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import torch  # noqa: E402

from tunekit.data import synthetic  # noqa: E402
from tunekit.data.formats import render_chat  # noqa: E402
from tunekit.data.prompts import PromptExample  # noqa: E402
from tunekit.fast import FastPathConfig, enable_fast_paths  # noqa: E402
from tunekit.models.load import ModelConfig, load_model, load_tokenizer  # noqa: E402
from tunekit.rl import tool_rollout  # noqa: E402
from tunekit.rl.rollout import SamplingConfig, generate_turn  # noqa: E402
from tunekit.tools.registry import ToolsConfig, ToolSpec, load_tools  # noqa: E402


def reading_everything(model, tokenizer, prompts, sampling, past=None, keep_context=False):
    """generate_turn without a KV context: the tool rollout's later turns then read their whole context."""
    return generate_turn(model, tokenizer, prompts, sampling)[0], None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/grpo-tools/final")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.model)
    model = load_model(ModelConfig(path=args.model)).eval()
    print("fast paths:", ", ".join(enable_fast_paths(model, FastPathConfig(), device="cpu").on))
    config = ToolsConfig(use=[ToolSpec(name="calculator")], max_turns=2)
    tools = load_tools(config.use)
    schemas = [tool.schema for tool in tools]
    rollouts = tool_rollout.ToolRollouts(config, tools, tokenizer)
    prompts = []
    for i, row in enumerate(synthetic.big_arithmetic_prompts(args.prompts, seed=7, split="held_out")):
        text = render_chat(row["prompt"], tokenizer, add_generation_prompt=True, tools=schemas)
        prompts.append(PromptExample(text, tokenizer(text, add_special_tokens=False)["input_ids"], {}, i))
    sampling = SamplingConfig(num_generations=4, max_new_tokens=96, temperature=1.0)
    ways = {"cache carried": generate_turn, "whole context": reading_everything}

    def one_pass(way: str) -> tuple[float, list[str], float]:
        tool_rollout.generate_turn = ways[way]
        torch.manual_seed(0)
        start, texts, calls = time.perf_counter(), [], 0
        for s in range(0, len(prompts), 8):
            out = rollouts(model, tokenizer, prompts[s : s + 8], sampling)
            texts += out.completions
            calls += sum(bool(c) for c in out.columns["tool_calls"])
        return time.perf_counter() - start, texts, calls / len(texts)

    for way in ways:  # warm-up
        one_pass(way)
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    same = []
    for round_number in range(args.rounds):
        order = list(ways) if round_number % 2 == 0 else list(ways)[::-1]
        results = {way: one_pass(way) for way in order}
        for way in ways:
            seconds[way].append(results[way][0])
        a, b = (results[way][1] for way in ways)
        same.append(sum(x == y for x, y in zip(a, b, strict=True)) / len(a))
        print(
            f"round {round_number}: "
            + ", ".join(f"{way} {results[way][0]:.3f} s" for way in ways)
            + f"; completions calling the tool {results['cache carried'][2]:.2f}; same trajectories {same[-1]:.3f}"
        )
    total = {way: sum(v) for way, v in seconds.items()}
    print(
        f"whole context / cache carried: {total['whole context'] / total['cache carried']:.3f}x "
        f"({total['cache carried']:.2f} s against {total['whole context']:.2f} s over {args.rounds} rounds); "
        f"same trajectories {min(same):.3f}-{max(same):.3f}"
    )


if __name__ == "__main__":
    main()
