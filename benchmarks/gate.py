"""The pause gate between timed windows, and the worker side of the driver <-> worker protocol.

A worker trains one side (tunekit or a TRL setting) in its own process. At every window boundary it stops at the
gate, reports the window that just ended on its protocol pipe, and waits for the driver's next command on stdin:
``go`` (run one more window) or ``stop``. The driver lets one worker run at a time, so the sides alternate on the
same cores and a burst of load from elsewhere hits both rather than one.

A window is timed from the moment the gate opens to the moment the next boundary is reached, so it covers whole
steps: data collation, forward, backward, optimizer, logging (and, for GRPO, generation).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import IO, Any


class Finished(Exception):
    """Raised at the last boundary to end a training run that has nothing left to measure."""


def open_protocol() -> IO[str]:
    """The pipe to the driver: the process's original stdout. Library prints are sent to stderr from here on."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return proto


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process so far: resident set size on the CPU, allocated memory on a GPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Gate:
    """Counts steps; at steps ``warmup + k * window`` (k = 0..windows) it reports and waits for the driver.

    ``at_step(i, units, tokens)`` is called when step i starts (tunekit) or, with the previous step's figures,
    when step i - 1 has ended (TRL): either way it is the boundary between step i - 1 and step i.
    """

    def __init__(self, warmup: int, window: int, windows: int, device: str, proto: IO[str], commands: IO[str]):
        self.warmup, self.window, self.windows, self.device = warmup, window, windows, device
        self.proto, self.commands = proto, commands
        self.opened_at: float | None = None
        self.units: list[float] = []
        self.tokens: list[float] = []
        self.flops: list[float] = []

    def record(self, units: float, tokens: float, flops: float = 0.0) -> None:
        """Figures of one step (units: tokens, pairs or completions; tokens: real tokens, 0 when unknown;
        flops: model FLOPs, 0 when not counted)."""
        self.units.append(float(units))
        self.tokens.append(float(tokens))
        self.flops.append(float(flops))

    def boundary(self, step: int) -> None:
        """Called between step ``step - 1`` and step ``step``; blocks at window boundaries."""
        if step < self.warmup or (step - self.warmup) % self.window:
            return
        now = time.perf_counter()
        k = (step - self.warmup) // self.window
        message: dict[str, Any] = {"event": "boundary", "index": k, "peak_memory_mb": peak_memory_mb(self.device)}
        if k > 0:
            if self.device == "cuda":
                import torch

                torch.cuda.synchronize()
                now = time.perf_counter()
            span = slice(step - self.window, step)
            message.update(
                seconds=now - self.opened_at,
                steps=self.window,
                units=sum(self.units[span]),
                tokens=sum(self.tokens[span]),
                flops=sum(self.flops[span]),
            )
        self.send(message)
        if k == self.windows:
            raise Finished
        command = self.commands.readline().strip()
        if command != "go":
            raise Finished
        self.opened_at = time.perf_counter()

    def send(self, message: dict[str, Any]) -> None:
        self.proto.write(json.dumps(message) + "\n")
        self.proto.flush()
