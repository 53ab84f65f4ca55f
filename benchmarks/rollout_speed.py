"""One GRPO rollout of the fixed workload, two ways side by side: tunekit's decoding loop and ``generate``.

    python benchmarks/rollout_speed.py [--rounds 5] [--device cpu|cuda] [--shape bench|1b] [--compile]

Both ways sample the same rollout: 2 GSM8K questions, 4 completions each, 64 new tokens, temperature 1, the
benchmark model with a LoRA adapter (r=16, alpha 32, on every linear layer) whose update is moved off zero as
training would. Each round times one rollout of each, alternating which goes first, and the script prints the
seconds of each and their ratio. ``generate`` is what tunekit used before ``tunekit.fast.decode`` and what it still
uses for models the loop does not cover. ``--compile`` adds a third way, the loop with its per-token step compiled
(what ``train.compile`` gives a GRPO run); its compilation happens in the warm-up round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from workload import grpo_data_config, model_path, workload  # noqa: E402

from tunekit.config import from_dict  # noqa: E402
from tunekit.data.prompts import PromptDataConfig, load_prompts  # noqa: E402
from tunekit.fast import FastPathConfig, enable_fast_paths  # noqa: E402
from tunekit.fast.decode import decode, lean_decoder  # noqa: E402
from tunekit.fast.packed_decode import packed_linears  # noqa: E402
from tunekit.fast.sampling import Sampler  # noqa: E402
from tunekit.models.adapters import AdapterConfig, apply_adapter  # noqa: E402
from tunekit.models.load import ModelConfig, load_model, load_tokenizer  # noqa: E402
from tunekit.rl import rollout  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="bench")
    parser.add_argument("--compile", action="store_true", help="also time the loop with its step compiled")
    args = parser.parse_args(argv)
    work = workload("grpo", str(model_path(args.shape)), "fp32", args.device)
    tokenizer = load_tokenizer(work.model)
    prompts = load_prompts(from_dict(PromptDataConfig, grpo_data_config(work)), tokenizer, work.seed).train
    model = load_model(ModelConfig(path=work.model)).to(args.device)
    model = apply_adapter(model, AdapterConfig(r=work.lora_r, alpha=work.lora_alpha)).eval()
    enable_fast_paths(model, FastPathConfig())  # what a GRPO run turns on, both ways measured with it
    ends = rollout.end_token_ids(model, tokenizer)  # the rollout's own end tokens, for both ways
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.01)
    sampling = rollout.SamplingConfig(num_generations=work.num_generations, max_new_tokens=work.max_new_tokens)
    group, new = sampling.num_generations, sampling.max_new_tokens
    per_rollout = work.batch_size // group  # prompts a rollout
    batches = [prompts[i * per_rollout : (i + 1) * per_rollout] for i in range(args.rounds + 1)]

    def loop(batch: list, compiled: bool = False) -> torch.Tensor:
        width = max(len(p.prompt_ids) for p in batch)
        ids, mask = rollout.left_padded(batch, width, tokenizer.pad_token_id)
        lean = lean_decoder(model, width + new)
        assert lean is not None
        ids, mask = ids.to(args.device), mask.to(args.device)
        linears = packed_linears(lean, len(batch) * group)
        return decode(lean, ids, mask, group, new, Sampler(), ends, tokenizer.pad_token_id, None, linears, compiled)

    def generate(batch: list) -> torch.Tensor:
        width = max(len(p.prompt_ids) for p in batch)
        ids, mask = rollout.left_padded(batch, width, tokenizer.pad_token_id)
        return rollout.generate_with_transformers(model, tokenizer, ids, mask, group, sampling, ends)

    ways = {"tunekit loop": loop, "generate": generate}
    if args.compile:
        ways["tunekit loop, compiled"] = lambda batch: loop(batch, compiled=True)
    for fn in ways.values():  # warm-up
        fn(batches[0])
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(args.rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for name in order:
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            ways[name](batches[1 + r])
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
        print(f"round {r}: " + ", ".join(f"{name} {seconds[name][-1]:.3f} s" for name in ways))
    mean = {name: sum(v) / len(v) for name, v in seconds.items()}
    print(
        f"{torch.get_num_threads()} threads, {args.device}: tunekit loop {mean['tunekit loop']:.3f} s, generate "
        f"{mean['generate']:.3f} s a rollout; generate / loop = {mean['generate'] / mean['tunekit loop']:.2f}x"
    )
    if args.compile:
        compiled = mean["tunekit loop, compiled"]
        ratio = mean["tunekit loop"] / compiled
        print(f"tunekit loop compiled {compiled:.3f} s a rollout; eager / compiled = {ratio:.2f}x")


if __name__ == "__main__":
    main()
