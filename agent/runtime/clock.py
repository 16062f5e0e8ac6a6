"""Wall-clock steps: NTP corrections, a gateway whose RTC lost power, an operator's `date -s`.

The monotonic clock never jumps, so a change in (wall − monotonic) larger than ordinary NTP
slewing is a step. Steps are reported, never hidden: accounting flags the periods they touch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("agent.runtime.clock")

STEP_S = 2.0  # slewing moves the clock by at most ~0.5 ms/s; anything this large is a step


class ClockWatch:
    def __init__(self, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self.mono = mono
        self.offset = wall() - mono()
        self.steps = 0

    def check(self) -> float | None:
        """The size of a step since the last check in seconds (+ forward), or None."""
        offset = self.wall() - self.mono()
        step = offset - self.offset
        self.offset = offset
        if abs(step) < STEP_S:
            return None
        self.steps += 1
        log.warning("wall clock stepped %+.1f s (now %s); periods around it are flagged 'clock'",
                    step, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.wall())))
        return step
