"""Feed systemd's watchdog only while the agent is really working.

A process that is alive is not the same as an agent that polls: a bus task can hang on a
serial port, an await can wait forever on a lost reply. So the watchdog is fed from the
evidence of work, not from a timer alone:

- every bus task calls `beat(name)` after each *completed* cycle — successful or not (a cycle
  whose meters all timed out still proves the task is running); it was `register`ed with its
  poll period beforehand;
- the event loop proves itself by running `run()`'s own tick: a blocked loop cannot send.

**The lateness rule.** A source registered with period P is stale once

    now − last beat  >  max(2 × P, 2 × W)

where W is the watchdog interval (systemd's WatchdogSec, from $WATCHDOG_USEC). Two periods
tolerate one slow or overrunning cycle; the 2 × W floor keeps fast buses from tripping on a
short stall. Registration counts as a beat, so a task has the same allowance for its first
cycle. While every source is fresh, `run()` sends WATCHDOG=1 every W/2 — systemd's
recommendation, leaving one missed tick of margin. When a source goes stale, `run()` stops
feeding and logs once which one; within W systemd kills the agent (SIGABRT) and
Restart=always starts it again. Worst case from a wedged bus's last beat to a kill:
max(2P, 2W) + W/2 + W. If the source recovers before that, feeding resumes and that is logged.

**Start-up.** systemd arms the watchdog only once READY=1 is received, so start-up is guarded by
TimeoutStartSec instead. The agent reports READY after its first completed poll, which may be
up to one poll interval away; rather than a huge TimeoutStartSec, `run()` extends the start
timeout (EXTEND_TIMEOUT_USEC) by W on each tick — under the same liveness rule, so a start
that wedges still times out.

Without $WATCHDOG_USEC (a terminal, a test rig) nothing is sent, but stale sources are still
detected and logged every DISARMED_TICK seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from agent.runtime import sdnotify

__all__ = ["DISARMED_TICK", "Watchdog"]

log = logging.getLogger(__name__)

# Check cadence, and the W of the lateness rule, when systemd armed no watchdog.
DISARMED_TICK = 30.0


@dataclass
class _Source:
    period: float
    last: float  # time.monotonic() of the last beat (or of registration)
    stale: bool = False  # currently reported as stale (so it is logged once per episode)


class Watchdog:
    """Liveness sources in, WATCHDOG=1 out. One instance per process, used from the loop."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval: float | None = interval if interval is not None else (
            sdnotify.watchdog_interval()
        )
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"watchdog interval must be > 0 s, got {self.interval}")
        self._sources: dict[str, _Source] = {}
        self._ready = False

    # -- liveness sources ------------------------------------------------------------------

    def register(self, name: str, period: float) -> None:
        """Expect `beat(name)` at least every `period` seconds from now on."""
        if period <= 0:
            raise ValueError(f"period of {name!r} must be > 0 s, got {period}")
        self._sources[name] = _Source(period=period, last=time.monotonic())

    def beat(self, name: str) -> None:
        """`name` completed a cycle. Raises KeyError for a name never registered."""
        self._sources[name].last = time.monotonic()

    def allowed_lateness(self, name: str) -> float:
        """Seconds `name` may go without a beat before the watchdog stops being fed."""
        return max(2 * self._sources[name].period, 2 * self._rule_interval)

    # -- notifications ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def mark_ready(self, status: str) -> bool:
        """Send READY=1 (with STATUS) the first time; later calls only update STATUS."""
        if self._ready:
            return sdnotify.status(status)
        self._ready = True
        log.info("ready: %s", status)
        return sdnotify.ready(status)

    # -- the feeding task ------------------------------------------------------------------

    @property
    def _rule_interval(self) -> float:
        return self.interval if self.interval is not None else DISARMED_TICK

    @property
    def tick(self) -> float:
        """Seconds between checks: half the watchdog interval."""
        return self.interval / 2 if self.interval is not None else DISARMED_TICK

    def check(self, now: float | None = None) -> bool:
        """Log changes in staleness; True when every source is fresh (the watchdog may be fed)."""
        now = time.monotonic() if now is None else now
        healthy = True
        for name, s in self._sources.items():
            late = now - s.last
            allowed = self.allowed_lateness(name)
            if late > allowed:
                healthy = False
                if not s.stale:
                    s.stale = True
                    log.error(
                        "watchdog: %r has not completed a cycle for %.1f s (allowed %.1f s) — "
                        "it looks wedged; no longer feeding systemd's watchdog, "
                        "expect a restart",
                        name, late, allowed,
                    )
            elif s.stale:
                s.stale = False
                log.warning("watchdog: %r is beating again after %.1f s", name, late)
        return healthy

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `tick` seconds and feed systemd while healthy; return when `stop` is set."""
        tick = self.tick
        due = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now - due > tick:
                # Our own tick came late: something blocked the event loop (a sync call, a
                # GC storm, a starved CPU). Only beats tell whether work is still done.
                log.warning("watchdog: event loop was blocked for about %.1f s", now - due)
            if self.check(now) and self.interval is not None:
                if not self._ready:
                    sdnotify.notify(f"EXTEND_TIMEOUT_USEC={int(self.interval * 1_000_000)}")
                sdnotify.watchdog()
            due = time.monotonic() + tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
