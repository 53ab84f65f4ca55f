"""Loss spikes: a step whose loss is far above the recent median usually points at bad data."""

from __future__ import annotations

import statistics
from collections import deque

# A spike must also exceed the median by this much (in the loss's own units, nats for every tunekit loss). Losses
# that sit near zero, as a policy-gradient loss does, are many times their median from one batch to the next
# without any row being at fault.
MIN_EXCESS = 0.5


class SpikeDetector:
    """Flags a loss above ``factor`` times the median of the last ``window`` losses and :data:`MIN_EXCESS` above
    it (after ``warmup`` steps). Its recent losses go into every checkpoint, so a resumed run flags the steps the
    uninterrupted run flags."""

    def __init__(self, factor: float, window: int = 50, warmup: int = 10) -> None:
        self.factor = factor
        self.warmup = warmup
        self.recent: deque[float] = deque(maxlen=window)

    def is_spike(self, loss: float) -> bool:
        spike = False
        if self.factor > 0 and len(self.recent) >= self.warmup:
            median = statistics.median(self.recent)
            spike = loss > self.factor * max(median, 1e-8) and loss - median > MIN_EXCESS
        # A spike is kept out of the reference window, so one bad batch does not raise the bar for the next.
        if not spike:
            self.recent.append(loss)
        return spike

    def state_dict(self) -> list[float]:
        return list(self.recent)

    def load_state_dict(self, recent: list[float]) -> None:
        self.recent.clear()
        self.recent.extend(float(loss) for loss in recent)
