"""One bus, one cycle at a time: read every meter, keep each meter's health, hand samples on.

A meter that keeps failing goes offline and is probed once per cooldown, so a dead meter
costs one timeout per cooldown instead of timeout × retries every cycle, and never stretches
the cycle of the healthy meters sharing its line. Every skipped or failed poll is still
recorded, as gap readings, so completeness counts what really happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.runtime.conditions import Conditions
from buffer.store import MeterStatus
from drivers.base import BusFault, Driver, MeterError, MeterPoll, Quality, Reading
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


@dataclass(frozen=True, slots=True)
class BusSnapshot:
    """What others may know of one bus (the heartbeat reads it): each meter's health, the
    cycles completed and the ticks skipped because the previous cycle still ran."""

    bus: str
    meters: tuple[MeterStatus, ...]
    cycles: int
    overruns: int


def gaps(meter: MeterConfig, ts: int, quality: Quality) -> list[Reading]:
    return [Reading(meter.name, p.name, ts, None, quality) for p in meter.points]


class BusPoller:
    """Polls the meters of one bus through its driver; the caller calls `start_cycle` on each
    tick of its clock.

    Logs conditions, not polls (agent/runtime/conditions.py): a meter going offline, points
    failing, a meter busy, the bus failing — one line when each starts, one an hour while it
    lasts, one when it ends.
    """

    def __init__(
        self,
        bus: BusConfig,
        meters: Sequence[MeterConfig],
        driver: Driver,
        sink: Sink,
        clock: Callable[[], float] = time.time,
        on_plan: Callable[[str, list[str] | None], None] | None = None,
    ) -> None:
        self.bus = bus
        self.meters = list(meters)
        self.driver = driver
        self.sink = sink
        self.clock = clock
        self.on_plan = on_plan  # a meter's read plan changed (refused points found or gone)
        self.health = {m.name: MeterHealth(m.name, bus.name) for m in self.meters}
        self.cycles = 0
        self.overruns = 0
        self._cycle: asyncio.Task[list[Sequence[Reading]]] | None = None
        self.conditions = Conditions(log, clock=clock)
        self._stored: dict[str, tuple[tuple[bool, int, int], int]] = {}
        self._plans: dict[str, list[str] | None] = {}
        self._failing: dict[str, tuple[str, ...]] = {}  # meter -> its points failing now
        self._watch: set[str] = set()  # meters with a condition going on or a refined plan

    def snapshot(self) -> BusSnapshot:
        return BusSnapshot(self.bus.name, tuple(self.statuses()), self.cycles, self.overruns)

    def start_cycle(self) -> asyncio.Task[list[Sequence[Reading]]] | None:
        """Start a cycle as a task named for the bus; None, and one overrun counted, while the
        previous cycle still runs (a tick skipped, never two cycles on one line)."""
        if self._cycle is not None and not self._cycle.done():
            self.overruns += 1
            return None
        # The cycle is the task itself (no wrapper coroutine): every resume of a task walks
        # its whole chain of coroutines, ~2 per transaction, 100 buses a second.
        self._cycle = asyncio.create_task(self.poll_once(), name=self.bus.name)
        return self._cycle

    def missed_tick(self) -> None:
        """The clock could not even start this tick (the loop was blocked): an overrun too."""
        self.overruns += 1

    def restore(self, statuses: Sequence[MeterStatus],
                plans: Mapping[str, list[str] | None] | None = None) -> None:
        """Carry health across restarts: error counts, last-good times, and the offline state
        — an offline meter stays offline (no new line) and is probed in the first cycle, after
        the healthy meters, instead of costing `offline_after` more failed cycles. `plans`: the
        read plans saved by the last run, so one that no longer applies is cleared."""
        for name, plan in (plans or {}).items():
            if name in self.health and plan:
                self._plans[name] = plan
                self._watch.add(name)
        for s in statuses:
            h = self.health.get(s.meter)
            if h is not None:
                h.errors_total = s.errors_total
                h.last_good_ms = s.last_good_ms
                h.last_error_ms = s.last_error_ms
                h.last_error = s.last_error
                if not s.online:
                    h.online = False
                    h.consecutive_failures = s.consecutive_failures
                    h.next_probe_ms = 0
                    self.conditions.assume(("offline", s.meter), s.last_error or "")
                    self._watch.add(s.meter)

    def statuses(self) -> list[MeterStatus]:
        """Every meter's health now (saved at shutdown)."""
        return [h.status() for h in self.health.values()]

    async def poll_once(self) -> list[Sequence[Reading]]:
        """Read every meter once; returns (and hands the sink) each meter's samples, in order.

        Healthy meters are read first and failing or offline ones (due a probe) after them, so
        a dead meter's timeout delays a live meter's reading at most in the cycle it first
        fails. A bus fault (the port or endpoint cannot be opened) ends the cycle's reads:
        every other meter would fail alike.
        """
        got: dict[str, Sequence[Reading]] = {}
        changed: list[MeterStatus] = []
        bus_fault: BusFault | None = None
        # A meter failing or offline goes last (stable: config order otherwise), from the
        # cycle after its first failure on — not only once it is offline.
        order = sorted(self.meters, key=self._unhealthy) if self._watch else self.meters
        for meter in order:
            h = self.health[meter.name]
            if bus_fault is not None:
                now = self._now_ms()
                touched = h.online or now >= h.next_probe_ms  # else it was not due anyway
                if touched:
                    self._failed(meter, h, f"{meter.label}: {bus_fault.detail}", busy=False, quiet=True)
                got[meter.name] = gaps(meter, now, bus_fault.quality if touched else Quality.OFFLINE)
            else:
                rows, touched, bus_fault = await self._poll_meter(meter)
                got[meter.name] = rows
            if touched and self._worth_storing(h):
                changed.append(h.status())
        readings = [got[m.name] for m in self.meters]
        await self.sink(readings, changed)
        self.cycles += 1
        return readings

    def _unhealthy(self, meter: MeterConfig) -> bool:
        h = self.health[meter.name]
        return not h.online or h.consecutive_failures > 0

    async def _poll_meter(self, meter: MeterConfig) -> tuple[Sequence[Reading], bool, BusFault | None]:
        h = self.health[meter.name]
        if not h.online and (now := self._now_ms()) < h.next_probe_ms:
            return gaps(meter, now, Quality.OFFLINE), False, None
        try:
            rows = await self.driver.read(meter)
            if ("bus",) in self.conditions:
                self._bus_recovered()
        except BusFault as e:
            self.conditions.happening(("bus",), str(e), f"bus {self.bus.name}: still failing", str(e))
            self._failed(meter, h, f"{meter.label}: {e.detail}", busy=False, quiet=True)
            return gaps(meter, self._now_ms(), e.quality), True, e
        except MeterError as e:
            self._failed(meter, h, str(e), busy=e.busy)
            quality = Quality.EXCEPTION if e.busy else e.quality
            self._plan_changed(meter)
            return gaps(meter, self._now_ms(), quality), True, None
        except Exception as e:  # a driver bug must cost one meter one cycle, never the bus task
            message = f"{meter.label}: unexpected driver error {type(e).__name__}: {e}"
            self._failed(meter, h, message, busy=False)
            return gaps(meter, self._now_ms(), Quality.CORRUPT), True, None
        # Quality.GOOD is the only 0; a MeterPoll is GOOD throughout.
        bad = [] if type(rows) is MeterPoll else [r for r in rows if r.quality]
        if not bad:  # the every-cycle case, kept short
            if type(rows) is MeterPoll:
                h.last_good_ms = rows.ts
            elif rows:
                h.last_good_ms = max([r.ts for r in rows])
            if not h.online or h.consecutive_failures or meter.name in self._watch:
                self._recovered(meter, h, ())
            return rows, True, None
        good = [r for r in rows if not r.quality]
        if good:
            h.last_good_ms = max(r.ts for r in good)
            names = tuple(sorted({r.point for r in bad}))
            why = self._why(meter, bad)
            if self._failing.get(meter.name) != names:
                # An error when these points start failing, not on every poll they go on failing
                # (a refused point would otherwise rewrite the meter's health every poll).
                self._note_error(h, f"{meter.label}: {len(bad)} point(s) failed: {', '.join(names)} — {why}")
            self._recovered(meter, h, names)
            self._watch.add(meter.name)
            self.conditions.happening(
                ("points", meter.name, names),
                f"{meter.label}: {len(names)} point(s) failing, the others are read: "
                f"{', '.join(names)} — {why}", f"{meter.label}: still failing: {', '.join(names)}", why,
            )
        else:
            why = self._why(meter, bad)
            self._failed(meter, h, f"{meter.label}: every point failed — {why}", busy=False)
            self._plan_changed(meter)
        return rows, True, None

    def _recovered(self, meter: MeterConfig, h: MeterHealth, failing: tuple[str, ...]) -> None:
        """The meter answered (`failing`: the points that still failed). Conditions that ended
        are logged as such: offline at once, the others after three good polls in a row."""
        name, c = meter.name, self.conditions
        h.online = True
        h.consecutive_failures = 0
        c.over(("busy", name), f"{meter.label}: no longer busy", after=3)
        if not c.over(("offline", name), f"{meter.label}: back online"):
            c.over(("failing", name), f"{meter.label}: answering again", after=3)
        self._points_ok(meter, failing)
        self._plan_changed(meter)
        if name not in self._failing and not self._plans.get(name) and not any(
            (kind, name) in c for kind in ("busy", "offline", "failing")
        ):
            self._watch.discard(name)

    def _bus_recovered(self) -> None:
        """The bus answers again: the meters it took offline are probed in this cycle, not a
        cooldown later (they were not at fault)."""
        self.conditions.over(("bus",), f"bus {self.bus.name}: working again")
        for h in self.health.values():
            if not h.online:
                h.next_probe_ms = 0

    def _points_ok(self, meter: MeterConfig, failing: tuple[str, ...]) -> None:
        """End the meter's failing-points condition unless the same points still fail."""
        old = self._failing.get(meter.name)
        if old is not None and old != failing:
            key = ("points", meter.name, old)
            if set(old) <= set(failing):  # more points fail now: the new line covers these
                self.conditions.forget(key)
            elif not self.conditions.over(key, f"{meter.label}: {', '.join(old)} read again", after=3):
                return  # not over yet (it failed within the last three polls)
        if failing:
            self._failing[meter.name] = failing
        else:
            self._failing.pop(meter.name, None)

    def _plan_changed(self, meter: MeterConfig) -> None:
        read_plan = getattr(self.driver, "read_plan", None)
        plan = read_plan(meter.name) if read_plan is not None else None
        if plan != self._plans.get(meter.name):
            # Not logged: the failing-points line already names each refused point and why.
            self._plans[meter.name] = plan
            if self.on_plan is not None:
                self.on_plan(meter.name, plan)

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
        a row per meter per poll would double the writes for nothing `status` needs (it reads
        the newest sample's time from the samples themselves)."""
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

    def _failed(self, meter: MeterConfig, h: MeterHealth, message: str, busy: bool,
                quiet: bool = False) -> None:
        """A failed poll of the meter. `quiet`: the bus's own condition line covers it."""
        self._note_error(h, message)
        self._watch.add(meter.name)
        if busy:
            # Exception 6: the meter is alive but occupied; retry next cycle, never take it offline.
            self.conditions.happening(("busy", meter.name), f"{message} — busy, retried next cycle",
                                      f"{meter.label}: still busy", level=logging.INFO)
            return
        h.consecutive_failures += 1
        detail = message.removeprefix(f"{meter.label}: ")
        if h.online and h.consecutive_failures >= self.bus.offline_after:
            h.online = False
            self.conditions.forget(("failing", meter.name))
            if not quiet:
                self.conditions.happening(
                    ("offline", meter.name),
                    f"{message} — offline after {h.consecutive_failures} failed cycles; probed "
                    f"again every {self.bus.offline_cooldown:g} s", f"{meter.label}: still offline",
                    detail,
                )
        elif not quiet:
            key = ("failing" if h.online else "offline", meter.name)
            self.conditions.happening(key, message, f"{meter.label}: still {key[0]}", detail)
        if not h.online:
            h.next_probe_ms = self._now_ms() + int(self.bus.offline_cooldown * 1000)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
