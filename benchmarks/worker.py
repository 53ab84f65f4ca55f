"""One side of the comparison in its own process (so that its peak memory is its own).

    python benchmarks/worker.py --side tunekit|trl|bare --setting '{"packing": true}' --workload '{...}' \
        --warmup 2 --window 3 --windows 4 --output-dir DIR

Started and driven by compare_trl.py: it reports on its original stdout (one JSON object per line) and reads
``go`` / ``stop`` from stdin at every window boundary; its own and its libraries' prints go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

# This checkout's tunekit, whatever else is installed: the benchmark measures the code beside it.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from gate import Gate, open_protocol, peak_memory_mb  # noqa: E402
from workload import Workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["tunekit", "trl", "bare"], required=True)
    parser.add_argument("--setting", default="{}")
    parser.add_argument("--workload", required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--window", type=int, required=True)
    parser.add_argument("--windows", type=int, required=True)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    if os.environ.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    proto = open_protocol()
    work = Workload.from_json(args.workload)
    setting = json.loads(args.setting)
    gate = Gate(args.warmup, args.window, args.windows, work.device, proto, sys.stdin)
    gate.send({"event": "started", "peak_memory_mb": peak_memory_mb(work.device)})
    max_steps = args.warmup + args.window * args.windows
    try:
        module = importlib.import_module(f"side_{args.side}")
        losses = module.run(work, setting, gate, Path(args.output_dir), max_steps)
    except BaseException as err:  # report, then fail: the driver shows the error of the side that broke
        gate.send({"event": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        raise
    gate.send({"event": "done", "losses": losses, "peak_memory_mb": peak_memory_mb(work.device)})
    proto.close()
    os._exit(0)  # skip interpreter teardown of big libraries; everything is reported


if __name__ == "__main__":
    main()
