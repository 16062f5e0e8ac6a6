"""One jittered exponential back-off, for everything that retries: the MQTT reconnect, the
forwarder after a failed round, a supervised task after a crash.

Why a low cap and jitter: the cap bounds how long a recovered destination waits for us — the
wait after a broker comes back is at most one delay, whatever the outage length — and the
jitter keeps a fleet of gateways that lost the same broker at the same moment from coming
back in lock-step. Each delay is drawn from [½, 1] × the exponential step ("equal jitter"),
so it never collapses to zero (no busy loop) and never exceeds the cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays first, 2 × first, 4 × first … up to `cap`, each jittered; `reset` after success."""

    def __init__(self, first: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        if first <= 0 or cap <= 0:
            raise ValueError(f"back-off delays must be positive, got first={first} cap={cap}")
        self.first = first
        self.cap = max(cap, first)
        self.failures = 0  # failures since the last reset
        self._rand = rand

    @property
    def step(self) -> float:
        """The un-jittered delay the next call to `next` draws from."""
        return min(self.cap, self.first * 2 ** min(self.failures, 30))

    @property
    def at_cap(self) -> bool:
        return self.step >= self.cap

    def next(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        delay = self.step * (0.5 + self._rand() / 2)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
