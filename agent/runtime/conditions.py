"""Log lines sized for a gateway's flash: a condition is logged when it starts, summarised
while it lasts and logged again when it ends — never once per poll.

A dead meter polled every second for a day writes three lines plus one summary an hour, not
86,400. Callers report every occurrence (`happening`) and every sign of health (`over`); this
object decides what reaches the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

SUMMARY_EVERY_S = 3600.0  # one "still …" line an hour while a condition lasts


@dataclass
class _Ongoing:
    since: float
    count: int  # occurrences since the condition started
    since_summary: int  # occurrences since the last line about it
    last_line: float
    detail: str
    healthy: int = 0  # calls to `over` since the last occurrence


def duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


class Conditions:
    def __init__(
        self,
        logger: logging.Logger,
        summary_every: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = logger
        self.summary_every = summary_every
        self.clock = clock
        self._ongoing: dict[Hashable, _Ongoing] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._ongoing

    def happening(
        self, key: Hashable, first: str, still: str, detail: str = "", level: int = logging.WARNING
    ) -> bool:
        """One more occurrence of `key`. The first logs `first`; later ones are counted and, once
        per summary period, logged as `still` with the count and the latest `detail`. Returns
        whether this occurrence started the condition."""
        now = self.clock()
        c = self._ongoing.get(key)
        if c is None:
            self._ongoing[key] = _Ongoing(now, 1, 0, now, detail)
            self.log.log(level, "%s", first)
            return True
        c.count += 1
        c.since_summary += 1
        c.healthy = 0
        c.detail = detail or c.detail
        if now - c.last_line >= self.summary_every:
            self.log.log(
                level, "%s — %d more time(s) in the last %s, for %s now%s", still, c.since_summary,
                duration(now - c.last_line), duration(now - c.since), f"; last: {c.detail}" if c.detail else "",
            )
            c.last_line = now
            c.since_summary = 0
        return False

    def over(self, key: Hashable, message: str, level: int = logging.INFO, after: int = 1) -> bool:
        """A sign that `key` has ended. It ends (logging `message` with how long it lasted) at
        the `after`-th sign in a row without an occurrence between: something that fails every
        other poll is one lasting condition, not a line pair per two polls."""
        c = self._ongoing.get(key)
        if c is None:
            return False
        c.healthy += 1
        if c.healthy < after:
            return False
        del self._ongoing[key]
        self.log.log(level, "%s (after %s, %d occurrence(s))", message, duration(self.clock() - c.since), c.count)
        return True

    def assume(self, key: Hashable, detail: str = "") -> None:
        """`key` is known to be going on already (logged by an earlier run): no first line."""
        if key not in self._ongoing:
            now = self.clock()
            self._ongoing[key] = _Ongoing(now, 0, 0, now, detail)

    def forget(self, key: Hashable) -> None:
        """Drop `key` without a line: a graver condition replaces it."""
        self._ongoing.pop(key, None)


class Overruns:
    """Buses whose poll cycle outlasts the poll interval, so ticks are skipped: a condition
    per bus, over after `over_after` ticks on time in a row (one overrun every other tick is
    one lasting condition, not a line pair per two ticks)."""

    def __init__(self, conditions: Conditions, poll_interval: float, over_after: int = 10) -> None:
        self.conditions = conditions
        self.poll_interval = poll_interval
        self.over_after = over_after

    def skipped(self, bus: str) -> None:
        self.conditions.happening(
            ("overrun", bus),
            f"bus {bus}: poll cycles skipped — a cycle takes longer than poll_interval "
            f"{self.poll_interval:g} s; run check-config to see the bus time per cycle",
            f"bus {bus}: still overrunning, cycles skipped",
        )

    def on_time(self, bus: str) -> None:
        if ("overrun", bus) in self.conditions:
            self.conditions.over(("overrun", bus), f"bus {bus}: cycles on time again",
                                 after=self.over_after)
