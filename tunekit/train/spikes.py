"""Loss spikes: a step whose loss is far above the recent median usually points at bad data."""

from __future__ import annotations

import statistics
from collections import deque


class SpikeDetector:
    """Flags a loss above ``factor`` times the median of the last ``window`` losses (after ``warmup`` steps)."""

    def __init__(self, factor: float, window: int = 50, warmup: int = 10) -> None:
        self.factor = factor
        self.warmup = warmup
        self.recent: deque[float] = deque(maxlen=window)

    def is_spike(self, loss: float) -> bool:
        spike = (
            self.factor > 0
            and len(self.recent) >= self.warmup
            and loss > self.factor * max(statistics.median(self.recent), 1e-8)
        )
        # A spike is kept out of the reference window, so one bad batch does not raise the bar for the next.
        if not spike:
            self.recent.append(loss)
        return spike
