"""Restatements: a sealed day, month or interval stated again, as a new signed envelope.

Nothing sealed is ever changed or deleted. When a late record changes a sealed period — a
manual entry for a day or month already sealed, a meter replacement recorded after the fact,
or an energy manager's `energy-agent restate` — the period is computed again and, if anything
differs, sealed as a new envelope of the same type whose body names what it supersedes
(`supersedes`: the envelope id, `supersedes_seq`) and why (`restated`). The days after a
restated day follow when their opening value changed, and the month follows its days. The
platform keeps both; the newest envelope of a period is its final value (docs/protocol.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from agent.accounting import statistics
from agent.accounting.manual import REPLACEMENT_EVENT

if TYPE_CHECKING:
    from agent.accounting.reports import Reporter

log = logging.getLogger("agent.accounting.restate")

MANUAL_CURSOR = "restate.manual_seq"
REPLACEMENT_CURSOR = "restate.replacement_event"
# What makes two bodies of one period "the same figures": the rest is metadata.
_ITEM_KEYS = ("dataCode", "meter", "point", "value", "flags", "startValue", "endValue")


class RestateError(ValueError):
    pass


def _body(payload: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(payload)["body"]
    return body


def _figures(body: dict[str, Any]) -> Any:
    items = [tuple(str(i.get(k, "")) for k in _ITEM_KEYS) for i in body.get("items", [])]
    manual = sorted(str(m.get("envelope", "")) for m in body.get("manual", []))
    return items, manual, body.get("total_tce"), body.get("total_status")


def restate_period(rep: Reporter, type_: str, period: str, reason: str, now_ms: int,
                   intervals: bool = False) -> list[int]:
    """Restate one sealed day ("daily", "YYYY-MM-DD") or month ("monthly", "YYYY-MM"), the days
    that follow a day, and the months they are in; with `intervals` (a counter changed, not
    only a manual entry) also the sealed intervals of those days. Returns the new envelopes'
    seqs ([] when every figure is unchanged)."""
    if type_ == "daily":
        day = date.fromisoformat(period)
        seqs = _restate_days(rep, day, reason, now_ms, intervals)
        months = {statistics.month_of(day)}
        if seqs:
            months |= {statistics.month_of(d) for d in _sealed_days_from(rep, day)}
        for m in sorted(months):
            seqs += _restate_one(rep, "monthly", m, rep.month_body(m, now_ms),
                                 f"follows its days: {reason}")
        return seqs
    if type_ == "monthly":
        return _restate_one(rep, "monthly", period, rep.month_body(period, now_ms), reason)
    raise RestateError(f"cannot restate {type_!r}: give a day or a month")


def _sealed_days_from(rep: Reporter, day: date) -> list[date]:
    rows = rep.store.outbox.sealed_periods("daily", day.isoformat(), "9999-12-31")
    return sorted(date.fromisoformat(p) for p in rows)


def _restate_days(rep: Reporter, day: date, reason: str, now_ms: int,
                  intervals: bool) -> list[int]:
    """The day, then each following sealed day while its figures change."""
    seqs: list[int] = []
    sealed = set(_sealed_days_from(rep, day))
    if day not in sealed:
        raise RestateError(f"day {day} is not sealed: it will be sealed with the change")
    d, why = day, reason
    while d in sealed:
        if intervals:
            seqs += _restate_intervals(rep, d, why, now_ms)
        new = _restate_one(rep, "daily", d.isoformat(), rep.day_body(d, now_ms), why)
        if not new:
            break
        seqs += new
        d, why = d + timedelta(days=1), f"opening value follows the restatement of {day}"
    return seqs


def _restate_one(rep: Reporter, type_: str, period: str, body: dict[str, Any],
                 reason: str) -> list[int]:
    rows = rep.store.outbox.envelopes(type_, period, period)
    if not rows:
        return []
    old = rows[-1]
    if _figures(_body(old.payload)) == _figures(body):
        return []
    body.update(supersedes=old.id, supersedes_seq=old.seq, restated=reason[:500],
                restatement=len(rows))
    seq = rep._seal(type_, body, period)
    log.info("restated %s report %s (seq %d supersedes %s): %s", type_, period, seq, old.id,
             reason[:200])
    return [seq]


def _restate_intervals(rep: Reporter, day: date, reason: str, now_ms: int) -> list[int]:
    """The sealed intervals of `day` whose figures change, computed in one pass (each opens
    with the one before it), from the interval before the day's."""
    grid = statistics.interval_bounds(day, rep.tz, rep.minutes)
    labels = [statistics.interval_label(s, rep.tz) for s in grid[:-1]]
    if not rep.store.outbox.sealed_periods("interval", labels[0], labels[-1]):
        return []
    bodies = rep.interval_bodies(grid[0], grid[-1], now_ms)
    seqs: list[int] = []
    for label in labels:
        seqs += _restate_one(rep, "interval", label, bodies[label], reason)
    return seqs


def restate_due(rep: Reporter, now_ms: int) -> list[int]:
    """Restate what late records changed: manual entries sealed after their day or month was,
    and meter replacements recorded for a day already sealed. Each record is looked at once
    (cursors); the first run only sets the cursors."""
    store = rep.store
    seqs: list[int] = []
    cursor = store.state.cursor(MANUAL_CURSOR, default=-1)
    # Only the entries sealed since the last look: this runs every minute.
    manual = store.outbox.envelopes("manual", after_seq=max(cursor, 0))
    top = max((r.seq for r in manual), default=max(cursor, 0))
    if cursor >= 0:
        for r in manual:
            kind = "monthly" if len(r.period) == 7 else "daily"
            sealed = store.outbox.envelopes(kind, r.period, r.period)
            if sealed and sealed[-1].seq < r.seq:
                with contextlib.suppress(RestateError):
                    seqs += restate_period(rep, kind, r.period, f"manual entry {r.id}", now_ms)
    if cursor != top:
        store.state.set_cursor(MANUAL_CURSOR, top)
    events = store.state.events(REPLACEMENT_EVENT)
    top = max((e[0] for e in events), default=0)
    cursor = store.state.cursor(REPLACEMENT_CURSOR, default=-1)
    if cursor >= 0:
        for eid, _, at_ms, data in events:
            if eid <= cursor:
                continue
            day = statistics.local_day(at_ms, rep.tz)
            if store.outbox.sealed_periods("daily", day.isoformat(), day.isoformat()):
                why = (f"meter {data.get('meter')}.{data.get('point')} replaced at "
                       f"{statistics.rfc3339(at_ms, rep.tz)}, recorded late")
                seqs += restate_period(rep, "daily", day.isoformat(), why, now_ms,
                                       intervals=True)
    if cursor != top:
        store.state.set_cursor(REPLACEMENT_CURSOR, top)
    return seqs
