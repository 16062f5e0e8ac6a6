"""Seals interval, daily and monthly reports when they are due: the I/O shell around
agent/accounting/counters.py and agent/accounting/statistics.py.

`Reporter.seal_due(now_ms)` runs on the store's thread (the app calls it every minute and at
start-up) and is idempotent: it seals every period that has ended, is ready and is not sealed
yet (the outbox records each envelope's period), oldest first. A period is ready when every
counter has a good read at or after its end (so the closing value is interpolated, not
guessed), or when a wait has passed (one interval length for intervals, an hour after
`daily_seal_at` for days) — a dead meter delays a report, it cannot block it. A day may not be
sealed before `daily_seal_at` of the next day. A month is sealed once its last day is.

Nothing is skipped because the agent was off or busy: on start it catches up on the last
CATCHUP_DAYS days (intervals: INTERVAL_CATCHUP_DAYS), never before the first day with readings.

Each counter's period opens with the closing value of the previous sealed period of the same
type (carried in the envelope as `endValue`), so consecutive periods chain exactly even when
the raw reads around a boundary are later pruned.

After each run the Reporter tells retention which raw readings it may still read: the cursor
`summarised_ts` is the start of the first interval or day not sealed yet, less LOOKBACK_MS —
what that period reads if its predecessor's envelope (the seed) has been pruned meanwhile.
Readings older than that are summarised; the disk budget takes newer ones only as the last
resort before unsent envelopes (buffer/retention.py).
"""

from __future__ import annotations

import itertools
import json
import logging
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from agent.accounting import counters, statistics, totals
from agent.accounting.coal import coefficients
from agent.accounting.counters import Replacement, Sample
from agent.accounting.freeze import freeze_sample
from agent.accounting.manual import REPLACEMENT_EVENT, manual_entries
from agent.accounting.restate import restate_due
from agent.accounting.statistics import STAT_DAY, STAT_INTERVAL, Item
from agent.config import Config
from agent.protocol.sealer import Sealer
from buffer.names import SUMMARISED_CURSOR
from buffer.store import Store
from drivers.base import Quality, Reading

log = logging.getLogger("agent.accounting.reports")

CATCHUP_DAYS = 40
INTERVAL_CATCHUP_DAYS = 2
DAY_WAIT_MS = 3_600_000  # after daily_seal_at, close a day even if a meter has not answered
CONTEXT_MS = 2 * 3_600_000  # reads fetched after a period's end (closing value, spike check)
LOOKBACK_MS = 86_400_000  # reads fetched before a period without a sealed predecessor
SINCE_KEY = "reports.since"  # first local day the agent reports (the first day with readings)
CLOCK_EVENT = "clock"


class Reporter:
    def __init__(self, cfg: Config, store: Store, sealer: Sealer | None) -> None:
        self.cfg = cfg
        self.store = store
        self.sealer = sealer  # None: compute only (export)
        self.tz = cfg.tz
        self.items = statistics.reported_items(cfg)
        self.coefs = coefficients(cfg.coefficients, cfg.coefficient)
        self.minutes = cfg.schedule.interval_minutes
        self.poll_s = cfg.schedule.poll_interval
        # More than two polls missed in a row is a gap.
        self.gap_ms = max(int(3 * self.poll_s * 1000), 1)

    # -- the scheduler's entry point ------------------------------------------------------------

    def seal_due(self, now_ms: int) -> list[int]:
        """Seal every interval, day and month that is due; return the new envelopes' seqs."""
        since = self._since(now_ms)
        if since is None:
            return []
        assert self.sealer is not None, "a Reporter without a Sealer only computes"
        last_good = {it: self._last_good(it, now_ms) for it in self.items
                     if it.kind == "counter"}
        seqs, open_interval = self._seal_intervals(now_ms, since, last_good)
        day_seqs, open_day = self._seal_days(now_ms, since, last_good)
        seqs += day_seqs
        seqs += self._seal_months(now_ms, since)
        seqs += restate_due(self, now_ms)
        self._hold_readings(min(open_interval, open_day) - LOOKBACK_MS)
        return seqs

    def _hold_readings(self, summarised_ts: int) -> None:
        """Tell retention which readings accounting may still read (see the module docstring).
        Written only when it moves — about once a day — to spare the flash a write a minute."""
        if self.store.state.cursor(SUMMARISED_CURSOR, default=-1) != summarised_ts:
            self.store.state.set_cursor(SUMMARISED_CURSOR, summarised_ts)

    def _ready(self, end_ms: int, deadline_ms: int, now_ms: int,
               last_good: dict[Item, int | None]) -> bool:
        if now_ms >= deadline_ms:
            return True
        return all(ts is not None and ts >= end_ms for ts in last_good.values())

    def _seal_intervals(self, now_ms: int, since: date,
                        last_good: dict[Item, int | None]) -> tuple[list[int], int]:
        """(seqs sealed, start of the first interval still open)."""
        first = max(since, statistics.local_day(now_ms, self.tz)
                    - timedelta(days=INTERVAL_CATCHUP_DAYS))
        starts: list[int] = []
        d = first
        while statistics.day_start_ms(d, self.tz) < now_ms:
            b = statistics.interval_bounds(d, self.tz, self.minutes)
            starts.extend(s for s, e in itertools.pairwise(b) if e <= now_ms)
            d += timedelta(days=1)
        if not starts:
            return [], statistics.day_start_ms(first, self.tz)
        step = self.minutes * 60_000
        labels = [statistics.interval_label(s, self.tz) for s in starts]
        sealed = self.store.outbox.sealed_periods("interval", labels[0], labels[-1])
        unsealed = [s for s, lab in zip(starts, labels, strict=True) if lab not in sealed]
        due = [s for s in unsealed if self._ready(s + step, s + 2 * step, now_ms, last_good)]
        ready = set(due)
        waiting = [s for s in unsealed if s not in ready]
        open_from = waiting[0] if waiting else starts[-1] + step
        if not due:
            return [], open_from
        bodies = self.interval_bodies(due[0], due[-1] + step, now_ms)
        seqs = []
        for s in due:
            label = statistics.interval_label(s, self.tz)
            seqs.append(self._seal("interval", bodies[label], label))
        return seqs, open_from

    def _seal_days(self, now_ms: int, since: date,
                   last_good: dict[Item, int | None]) -> tuple[list[int], int]:
        """(seqs sealed, start of the first day still open)."""
        today = statistics.local_day(now_ms, self.tz)
        first = max(since, today - timedelta(days=CATCHUP_DAYS))
        days = [first + timedelta(days=i) for i in range((today - first).days)]
        if not days:
            return [], statistics.day_start_ms(today, self.tz)
        sealed = self.store.outbox.sealed_periods("daily", days[0].isoformat(), days[-1].isoformat())
        seqs = []
        open_day = today
        for day in days:
            if day.isoformat() in sealed:
                continue
            seal_at = statistics.seal_at_ms(day, self.tz, self.cfg.schedule.daily_seal_at)
            end = statistics.day_start_ms(day + timedelta(days=1), self.tz)
            if now_ms < seal_at or not self._ready(end, seal_at + DAY_WAIT_MS, now_ms, last_good):
                open_day = day
                break  # later days are not due either: keep the order
            seqs.append(self._seal("daily", self.day_body(day, now_ms), day.isoformat()))
        return seqs, statistics.day_start_ms(open_day, self.tz)

    def _seal_months(self, now_ms: int, since: date) -> list[int]:
        today = statistics.local_day(now_ms, self.tz)
        first = max(since, today - timedelta(days=CATCHUP_DAYS))
        months = sorted({statistics.month_of(first + timedelta(days=i))
                         for i in range((today - first).days + 1)})
        seqs = []
        for month in months:
            last_day = statistics.month_days(month)[-1]
            if last_day >= today or self.store.outbox.sealed_periods("monthly", month, month):
                continue
            if not self.store.outbox.sealed_periods("daily", last_day.isoformat(),
                                             last_day.isoformat()):
                continue  # the month closes with its last day
            seqs.append(self._seal("monthly", self.month_body(month, now_ms), month))
        return seqs

    def _seal(self, type_: str, body: dict[str, Any], period: str) -> int:
        assert self.sealer is not None
        seq = self.sealer.seal(type_, body, period=period)
        # Interval reports come 96 a day: not worth a line each on a gateway's flash.
        log.log(logging.DEBUG if type_ == "interval" else logging.INFO,
                "sealed %s report %s (seq %d)", type_, period, seq)
        return seq

    # -- computing bodies (also used by `energy-agent export`) ----------------------------------

    def interval_bodies(self, start_ms: int, end_ms: int, now_ms: int) -> dict[str, dict[str, Any]]:
        """Bodies of the intervals from start_ms to end_ms (on the interval grid), by label."""
        step = self.minutes * 60_000
        bounds = list(range(start_ms, end_ms + 1, step))
        labels = [statistics.interval_label(s, self.tz) for s in bounds[:-1]]
        prev = statistics.interval_label(start_ms - step, self.tz)
        seeds = self._seeds("interval", prev)
        rates = self._rates(statistics.local_day(start_ms, self.tz))
        per_item = {it: self._item_periods(it, bounds, seeds.get((it.meter, it.point)), now_ms,
                                           STAT_INTERVAL, rates=rates.get(it))
                    for it in self.items}
        bodies = {}
        for k, label in enumerate(labels):
            bodies[label] = {
                "period": label,
                "period_start": statistics.rfc3339(bounds[k], self.tz),
                "interval_minutes": self.minutes,
                "items": [per_item[it][k] for it in self.items],
            }
        return bodies

    def day_body(self, day: date, now_ms: int) -> dict[str, Any]:
        start = statistics.day_start_ms(day, self.tz)
        grid = statistics.interval_bounds(day, self.tz, self.minutes)
        seeds = self._seeds("daily", (day - timedelta(days=1)).isoformat())
        rates = self._rates(day)
        items = []
        for it in self.items:
            (item,) = self._item_periods(it, [start, grid[-1]], seeds.get((it.meter, it.point)),
                                         now_ms, STAT_DAY, grid=grid, rates=rates.get(it))
            items.append(item)
        manual = self.manual_for(day.isoformat())
        summary = statistics.energy_summary(items, self.coefs, self.cfg.boundary, manual)
        items += totals.computed_items(summary, items, manual, self.cfg.boundary, STAT_DAY,
                                       statistics.rfc3339(start, self.tz), statistics.INPUT_METER)
        body: dict[str, Any] = {
            "period": day.isoformat(),
            "period_start": statistics.rfc3339(start, self.tz),
            "interval_minutes": self.minutes,
            "poll_interval_ms": int(self.poll_s * 1000),
            "items": items,
            "manual": manual,
        }
        body.update(summary)
        return body

    def manual_for(self, period: str) -> list[dict[str, Any]]:
        """The manual entries for exactly this day or month that no later entry supersedes."""
        return totals.final_entries(manual_entries(self.store, period, period))

    def month_body(self, month: str, now_ms: int) -> dict[str, Any]:
        """From the sealed days of the month; a day not sealed (yet) is computed."""
        today = statistics.local_day(now_ms, self.tz)
        since = self._since(now_ms) or today
        sealed = {r.period: _body(r.payload) for r in self.store.outbox.envelopes(
            "daily", f"{month}-01", f"{month}-31")}
        days = []
        for day in statistics.month_days(month):
            if day.isoformat() in sealed:
                days.append(sealed[day.isoformat()])
            elif since <= day < today:
                days.append(self.day_body(day, now_ms))
        return statistics.month_body(month, self.tz, days, self.coefs, self.cfg.boundary,
                                     self.manual_for(month))

    def _item_periods(self, it: Item, bounds: list[int], seed: Decimal | None, now_ms: int,
                      stat_type: int, grid: list[int] | None = None,
                      rates: counters.Rates | None = None) -> list[dict[str, Any]]:
        lo = bounds[0] - (0 if seed is not None else LOOKBACK_MS)
        hi = min(bounds[-1] + CONTEXT_MS, now_ms + 1)
        good = [r for r in self.store.readings.readings_for(it.meter, it.point, lo, hi) if _good(r)]
        clock = [ts for _, _, ts, _ in self.store.state.events(CLOCK_EVENT, since_ms=bounds[0])
                 if ts < bounds[-1]]
        out = []
        if it.kind == "counter":
            samples = [Sample(r.ts, counters.to_decimal(r.value, it.decimals)) for r in good
                       if r.value is not None]
            frozen = None
            if stat_type == STAT_DAY and it.freeze is not None:
                reads = self.store.readings.readings_for(it.meter, it.freeze, bounds[-1], hi)
                frozen = freeze_sample(reads, samples, bounds[-1], it.decimals, it.modulus)
                if frozen is not None:
                    samples = sorted([*samples, frozen], key=lambda x: x.ts)
            pvs = counters.close_periods(
                bounds, samples, decimals=it.decimals, modulus=it.modulus, seed=seed,
                replacements=self.replacements(it), gap_ms=self.gap_ms,
                rates=rates or counters.Rates(maximum=it.max_rate))
            for pv in pvs:
                flags = set(pv.flags)
                if any(pv.start <= t < pv.end for t in clock):
                    flags.add(counters.CLOCK)
                extra = {}
                if it.freeze is not None and stat_type == STAT_DAY:
                    # Says how the day closed: the meter's freeze register, or interpolation.
                    extra["closedBy"] = "freeze" if frozen is not None else "interpolation"
                    if frozen is not None:
                        flags.add(counters.FREEZE)
                out.append(self._item(it, stat_type, pv.start, pv.end, pv.consumption, flags,
                                      good, grid, startValue=pv.start_value,
                                      endValue=pv.end_value, **extra))
        else:
            for s, e in itertools.pairwise(bounds):
                vals = [counters.to_decimal(r.value, it.decimals) for r in good
                        if s <= r.ts < e and r.value is not None]
                value = statistics.mean(vals, it.decimals)
                flags = set() if vals else {counters.NO_DATA}
                if any(s <= t < e for t in clock):
                    flags.add(counters.CLOCK)
                out.append(self._item(it, stat_type, s, e, value, flags, good, grid))
        return out

    def _item(self, it: Item, stat_type: int, start: int, end: int, value: Decimal | None,
              flags: set[str], good: list[Reading], grid: list[int] | None,
              **extra: Any) -> dict[str, Any]:
        in_period = [r.ts for r in good if start <= r.ts < end]
        if grid is not None:
            c = statistics.completeness_of(in_period, grid, self.poll_s)
            extra.update(samples=c.samples, samplesExpected=c.samples_expected,
                         intervals=c.intervals, intervalsExpected=c.intervals_expected,
                         completeness=c.ratio)
        else:
            extra["samples"] = len(in_period)
        return statistics.item_dict(it, stat_type, statistics.rfc3339(start, self.tz), value,
                                    flags, **extra)

    # -- store look-ups -------------------------------------------------------------------------

    def replacements(self, it: Item) -> list[Replacement]:
        out = []
        for _, _, _, data in self.store.state.events(REPLACEMENT_EVENT):
            if data.get("meter") == it.meter and data.get("point") == it.point:
                out.append(Replacement(int(data["at_ms"]), Decimal(data["old_final"]),
                                       Decimal(data["new_initial"])))
        return out

    def _seeds(self, type_: str, period: str) -> dict[tuple[str, str], Decimal]:
        """Closing counter values of the sealed period `period`, by (meter, point)."""
        rows = self.store.outbox.envelopes(type_, period, period)
        if not rows:
            return {}
        out = {}
        for it in _body(rows[-1].payload)["items"]:  # the newest: a restatement is final
            if it.get("endValue"):
                out[(it["meter"], it["point"])] = Decimal(it["endValue"])
        return out

    def _rates(self, day: date) -> dict[Item, counters.Rates]:
        """Each counter's expected rate from its last sealed day in the week before `day` (its
        own history), with its configured maximum: what a long outage may have hidden."""
        rows = self.store.outbox.envelopes("daily", (day - timedelta(days=7)).isoformat(),
                                           (day - timedelta(days=1)).isoformat())
        values: dict[tuple[str, str], Decimal] = {}
        for r in rows:  # oldest first: the newest day wins
            for i in _body(r.payload)["items"]:
                if i.get("kind") == "counter" and i["value"] not in ("", None) and \
                        counters.NO_DATA not in i["flags"]:
                    values[(i["meter"], i["point"])] = Decimal(i["value"])
        out = {}
        for it in self.items:
            v = values.get((it.meter, it.point))
            expected = v / 86_400_000 if v is not None and v > 0 else None
            out[it] = counters.Rates(expected, it.max_rate)
        return out

    def _last_good(self, it: Item, now_ms: int) -> int | None:
        """The newest good sample of `it` in the last 2 × DAY_WAIT_MS, or None.

        Searched newest window first, each window twice the last: a meter that answers is
        found among its last few polls instead of re-reading two hours of them per counter on
        every run (720,000 samples at 1 s polling and 100 counters)."""
        end = now_ms + 1
        floor = now_ms - 2 * DAY_WAIT_MS
        span = max(60_000, int(4 * self.poll_s * 1000))
        while end > floor:
            start = max(floor, end - span)
            rows = self.store.readings.readings_for(it.meter, it.point, start, end)
            found = next((r.ts for r in reversed(rows) if _good(r)), None)
            if found is not None:
                return found
            end, span = start, 2 * span
        return None

    def _since(self, now_ms: int) -> date | None:
        """The first day to report: remembered once found, else the first day with readings."""
        text = self.store.state.get(SINCE_KEY)
        if text:
            return date.fromisoformat(text)
        today = statistics.local_day(now_ms, self.tz)
        for i in range(CATCHUP_DAYS, -1, -1):
            day = today - timedelta(days=i)
            start = statistics.day_start_ms(day, self.tz)
            end = statistics.day_start_ms(day + timedelta(days=1), self.tz)
            if any(any(_good(r) for r in self.store.readings.readings_for(it.meter, it.point, start, end))
                   for it in self.items):
                self.store.state.set(SINCE_KEY, day.isoformat())
                return day
        return None


def _good(r: Reading) -> bool:
    return r.quality == Quality.GOOD and r.value is not None


def _body(payload: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(payload)["body"]
    return body


def completeness(store: Store, cfg: Config, day: date, now_ms: int | None = None,
                 since_ms: int | None = None) -> dict[tuple[str, str], float]:
    """Completeness of each reported (meter, point) on local `day`, 0.0–1.0, for `status`.

    The lower of samples got ÷ expected and intervals got ÷ expected; for a day in progress
    (pass now_ms) only the elapsed part is expected, and from `since_ms` (the agent's first
    poll, on its first day) only what came after it.
    """
    tz = cfg.tz
    grid = statistics.interval_bounds(day, tz, cfg.schedule.interval_minutes)
    if since_ms is not None and grid[0] < since_ms < grid[-1]:
        grid = [since_ms, *(b for b in grid[1:] if b > since_ms)]
    out = {}
    for it in statistics.reported_items(cfg):
        ts = [r.ts for r in store.readings.readings_for(it.meter, it.point, grid[0], grid[-1]) if _good(r)]
        c = statistics.completeness_of(ts, grid, cfg.schedule.poll_interval, until_ms=now_ms)
        out[(it.meter, it.point)] = float(c.ratio)
    return out
