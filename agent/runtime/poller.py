"""One bus, one cycle at a time: read every meter, keep each meter's health, hand samples on.

A meter that keeps failing goes offline and is probed once per cooldown, so a dead meter
costs one timeout per cooldown instead of timeout × retries every cycle, and never stretches
the cycle of the healthy meters sharing its line. Every skipped or failed poll is still
recorded, as gap readings, so completeness counts what really happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from buffer.store import MeterStatus
from drivers.base import Driver, MeterError, MeterPoll, Quality, Reading
from drivers.model import BusConfig, MeterConfig

log = logging.getLogger("agent.runtime.poller")

STATUS_EVERY_MS = 60_000

# One cycle's samples, a sequence per meter in the bus's meter order, and the health changes.
Sink = Callable[[list[Sequence[Reading]], list[MeterStatus]], Awaitable[None]]


@dataclass
class MeterHealth:
    meter: str
    bus: str
    online: bool = True
    consecutive_failures: int = 0
    errors_total: int = 0
    last_good_ms: int | None = None
    last_error_ms: int | None = None
    last_error: str | None = None
    next_probe_ms: int = 0

    def status(self) -> MeterStatus:
        return MeterStatus(
            meter=self.meter,
            bus=self.bus,
            online=self.online,
            last_good_ms=self.last_good_ms,
            last_error_ms=self.last_error_ms,
            last_error=self.last_error,
            errors_total=self.errors_total,
            consecutive_failures=self.consecutive_failures,
        )


def label(meter: MeterConfig) -> str:
    return f'meter "{meter.name}" (bus {meter.bus}, {meter.station})'


def gaps(meter: MeterConfig, ts: int, quality: Quality) -> list[Reading]:
    return [Reading(meter.name, p.name, ts, None, quality) for p in meter.points]


class BusPoller:
    """Polls the meters of one bus through its driver; the caller schedules `poll_once`."""

    def __init__(
        self,
        bus: BusConfig,
        meters: Sequence[MeterConfig],
        driver: Driver,
        sink: Sink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.meters = list(meters)
        self.driver = driver
        self.sink = sink
        self.clock = clock
        self.health = {m.name: MeterHealth(m.name, bus.name) for m in self.meters}
        self.cycles = 0
        self._stored: dict[str, tuple[tuple[bool, int, int], int]] = {}

    def restore(self, statuses: Sequence[MeterStatus]) -> None:
        """Carry error counts and last-good times across restarts (offline state is re-learnt)."""
        for s in statuses:
            h = self.health.get(s.meter)
            if h is not None:
                h.errors_total = s.errors_total
                h.last_good_ms = s.last_good_ms
                h.last_error_ms = s.last_error_ms
                h.last_error = s.last_error

    async def poll_once(self) -> list[Sequence[Reading]]:
        """Read every meter once; returns (and hands the sink) each meter's samples, in order."""
        readings: list[Sequence[Reading]] = []
        changed: list[MeterStatus] = []
        for meter in self.meters:
            rows, touched = await self._poll_meter(meter)
            readings.append(rows)
            if touched and self._worth_storing(self.health[meter.name]):
                changed.append(self.health[meter.name].status())
        await self.sink(readings, changed)
        self.cycles += 1
        return readings

    async def _poll_meter(self, meter: MeterConfig) -> tuple[Sequence[Reading], bool]:
        h = self.health[meter.name]
        if not h.online and (now := self._now_ms()) < h.next_probe_ms:
            return gaps(meter, now, Quality.OFFLINE), False
        try:
            rows = await self.driver.read(meter)
        except MeterError as e:
            self._failed(meter, h, str(e), busy=e.busy)
            quality = Quality.EXCEPTION if e.busy else e.quality
            return gaps(meter, self._now_ms(), quality), True
        except Exception as e:  # a driver bug must cost one meter one cycle, never the bus task
            message = f"{label(meter)}: unexpected driver error {type(e).__name__}: {e}"
            log.error("%s", message)
            self._failed(meter, h, message, busy=False)
            return gaps(meter, self._now_ms(), Quality.CORRUPT), True
        # Quality.GOOD is the only 0; a MeterPoll is GOOD throughout.
        bad = [] if type(rows) is MeterPoll else [r for r in rows if r.quality]
        if not bad:  # the every-cycle case, kept short
            if not h.online:
                log.info("%s: back online", label(meter))
                h.online = True
            h.consecutive_failures = 0
            if type(rows) is MeterPoll:
                h.last_good_ms = rows.ts
            elif rows:
                h.last_good_ms = max([r.ts for r in rows])
            return rows, True
        good = [r for r in rows if not r.quality]
        if good:
            if not h.online:
                log.info("%s: back online", label(meter))
            h.online = True
            h.consecutive_failures = 0
            h.last_good_ms = max(r.ts for r in good)
            if bad:
                names = ", ".join(sorted({r.point for r in bad}))
                message = f"{label(meter)}: {len(bad)} point(s) failed: {names} — {self._why(meter, bad)}"
                self._note_error(h, message)
                log.warning("%s", message)
        else:
            why = self._why(meter, bad)
            self._failed(meter, h, f"{label(meter)}: every point failed — {why}", busy=False)
        return rows, True

    def _why(self, meter: MeterConfig, bad: list[Reading]) -> str:
        """The driver's own reasons for the failed requests (exception code, registers, hint),
        plus what it does not report as a request failure: values that decoded to NaN or inf."""
        parts = list(dict.fromkeys(self.driver.last_failures(meter.name)))
        if any(r.quality == Quality.INVALID for r in bad):
            parts.append("not a usable number (NaN or infinite)")
        if not parts:  # a driver that gives no reasons: name the kinds of gap at least
            parts = sorted({Quality(r.quality).name.lower() for r in bad}) or ["no points"]
        return "; ".join(parts)

    def _worth_storing(self, h: MeterHealth) -> bool:
        """Health is stored when it changes meaning, and its last-good time once a minute:
        a row per meter per poll would double the writes for nothing `status` needs."""
        key = (h.online, h.errors_total, h.consecutive_failures)
        now = self._now_ms()
        last = self._stored.get(h.meter)
        if last is not None and last[0] == key and now - last[1] < STATUS_EVERY_MS:
            return False
        self._stored[h.meter] = (key, now)
        return True

    def _note_error(self, h: MeterHealth, message: str) -> None:
        h.errors_total += 1
        h.last_error_ms = self._now_ms()
        h.last_error = message

    def _failed(self, meter: MeterConfig, h: MeterHealth, message: str, busy: bool) -> None:
        self._note_error(h, message)
        if busy:
            # Exception 6: the meter is alive but occupied; retry next cycle, never take it offline.
            log.info("%s — busy, retried next cycle", message)
            return
        h.consecutive_failures += 1
        if h.online and h.consecutive_failures >= self.bus.offline_after:
            h.online = False
            log.warning(
                "%s — offline after %d failed cycles; probed again every %g s",
                message, h.consecutive_failures, self.bus.offline_cooldown,
            )
        elif h.online:
            log.warning("%s", message)
        if not h.online:
            h.next_probe_ms = self._now_ms() + int(self.bus.offline_cooldown * 1000)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
