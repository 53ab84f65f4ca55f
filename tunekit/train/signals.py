"""SIGTERM and SIGINT during training: finish the step, checkpoint, exit with a distinct code."""

from __future__ import annotations

import signal
import sys
from typing import Any

# 128 + SIGTERM, what a shell reports for a terminated process; schedulers treat it as "preempted, requeue".
PREEMPTED_EXIT_CODE = 143
# 128 + SIGINT: a second signal while the first one's checkpoint is being written stops the run at once.
INTERRUPTED_EXIT_CODE = 130


class StopSignal:
    """Remembers SIGTERM / SIGINT so the loop can finish its step and checkpoint before exiting."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            # A second signal: give up at once. The checkpoint being written removes its partial copy on the way
            # out (tunekit.train.checkpoint), so resume=auto finds the last complete one.
            print(
                f"received a second signal ({signal.Signals(signum).name}) while stopping: stopped at once, without "
                "the checkpoint; continue with resume=auto from the last complete one",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(INTERRUPTED_EXIT_CODE)
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
