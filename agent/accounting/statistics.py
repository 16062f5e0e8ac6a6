"""Interval, daily and monthly values as envelope bodies: calendars, completeness, totals.

Pure functions over already-fetched data; agent/accounting/reports.py does the store reading and sealing.
Values travel as decimal strings and are summed as Decimal, so a month is exactly the sum of its
days (the monitoring system's data-quality requirements ask daily and monthly figures to agree
within 5 %; here a month's items are the exact sums of its days').

Every period is labelled with its local start, as the provincial data-quality evaluations
require (e.g. Anhui's, http://www.boteman.cn/paper/315935852.html): interval "2026-11-21T10:15",
day "2026-11-21", month "2026-11"; items carry the same start as RFC 3339 with offset.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from agent.accounting import totals
from agent.accounting.coal import Coefficients, format_decimal
from agent.accounting.counters import modulus_for
from agent.config import Config
from agent.config.codes import variety_of
from agent.config.schema import BoundarySection

STAT_INTERVAL, STAT_DAY, STAT_MONTH = 0, 1, 2
INPUT_METER, INPUT_MANUAL = 4, 5
INCOMPLETE = "incomplete"  # a month with days missing
# The regulator's data-quality line: values uploaded ÷ values expected ≥ 90 % per item (the
# monitoring system's data-quality requirements).
COMPLETENESS_MIN = 0.90


@dataclass(frozen=True, slots=True)
class Item:
    """One configured point that is reported (it has a data code)."""

    meter: str
    point: str
    code: str
    variety: str  # "" when not an energy variety
    unit: str
    kind: str  # counter | instantaneous
    decimals: int
    modulus: Decimal | None
    max_rate: Decimal | None = None  # plausible maximum, units per ms (PointConfig.max_rate)
    freeze: str | None = None  # the meter's point holding this counter's daily freeze


def reported_items(cfg: Config) -> list[Item]:
    """Every point with a data code, in config order."""
    out = []
    for m in cfg.meter:
        freezes = m.freezes()
        for p in m.points:
            if p.code is None:
                continue
            d = p.value_decimals
            mod = modulus_for(p.type, p.scale, p.modulus, d) if p.kind == "counter" else None
            rate = Decimal(repr(p.max_rate)) / 3_600_000 if p.max_rate else None
            variety = p.variety or variety_of(p.code) or ""
            out.append(Item(m.name, p.name, p.code, variety, p.unit, p.kind, d, mod, rate,
                            freezes.get(p.name)))
    return out


# -- calendars -------------------------------------------------------------------------------


def day_start_ms(day: date, tz: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def local_day(ms: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ms / 1000, tz).date()


def interval_bounds(day: date, tz: ZoneInfo, minutes: int) -> list[int]:
    """The starts of a local day's intervals, followed by the next day's start."""
    start, end = day_start_ms(day, tz), day_start_ms(day + timedelta(days=1), tz)
    step = minutes * 60_000
    return [*range(start, end, step), end]


def interval_label(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%dT%H:%M")


def rfc3339(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="seconds")


def month_days(month: str) -> list[date]:
    """The days of "YYYY-MM"."""
    first = date.fromisoformat(month + "-01")
    nxt = (first + timedelta(days=32)).replace(day=1)
    return [first + timedelta(days=i) for i in range((nxt - first).days)]


def month_of(day: date) -> str:
    return day.strftime("%Y-%m")


def seal_at_ms(day: date, tz: ZoneInfo, daily_seal_at: str) -> int:
    """When `day` may be sealed: daily_seal_at ("HH:MM") local time on the next day."""
    hh, mm = (int(x) for x in daily_seal_at.split(":"))
    nxt = day + timedelta(days=1)
    return int(datetime(nxt.year, nxt.month, nxt.day, hh, mm, tzinfo=tz).timestamp() * 1000)


# -- completeness ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Completeness:
    samples: int  # poll slots with a good sample
    samples_expected: int
    intervals: int  # intervals with at least one good sample
    intervals_expected: int

    @property
    def ratio(self) -> Decimal:
        """The lower of samples and intervals got ÷ expected (1 when nothing is expected)."""
        r = min(_ratio(self.samples, self.samples_expected),
                _ratio(self.intervals, self.intervals_expected))
        return r.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def _ratio(got: int, expected: int) -> Decimal:
    return Decimal(1) if expected <= 0 else min(Decimal(got) / Decimal(expected), Decimal(1))


def completeness_of(good_ts: Iterable[int], bounds: Sequence[int], poll_s: float,
                    until_ms: int | None = None) -> Completeness:
    """Count good samples of one item over intervals `bounds` (starts + end).

    A sample counts once per poll slot, so duplicates cannot push completeness over 100 %.
    With `until_ms` (a day still in progress) only the elapsed part is expected.
    """
    start, end = bounds[0], bounds[-1]
    if until_ms is not None:
        end = max(start, min(end, until_ms))
    poll_ms = max(1, round(poll_s * 1000))
    slots: set[int] = set()
    hit: set[int] = set()
    for ts in good_ts:
        if start <= ts < end:
            slots.add((ts - start) // poll_ms)
            hit.add(bisect.bisect_right(bounds, ts) - 1)
    samples_expected = math.ceil((end - start) / poll_ms)
    intervals_expected = sum(1 for s in bounds[:-1] if s < end)
    return Completeness(min(len(slots), samples_expected), samples_expected, len(hit),
                        intervals_expected)


# -- items and bodies ------------------------------------------------------------------------


def item_dict(item: Item, stat_type: int, period_start: str, value: Decimal | None,
              flags: Iterable[str], **extra: Any) -> dict[str, Any]:
    """One statistic as it goes on the wire: integers and strings only."""
    d: dict[str, Any] = {
        "dataCode": item.code,
        "meter": item.meter,
        "point": item.point,
        "variety": item.variety,
        "unit": item.unit,
        "kind": item.kind,
        "value": "" if value is None else format_decimal(value),
        "statType": stat_type,
        "inputType": INPUT_METER,
        "periodStart": period_start,
        "flags": sorted(set(flags)),
    }
    for k, v in extra.items():
        d[k] = format_decimal(v) if isinstance(v, Decimal) else ("" if v is None else v)
    return d


def mean(values: Sequence[Decimal], decimals: int) -> Decimal | None:
    """Average of an instantaneous quantity's good samples, at the point's precision."""
    if not values:
        return None
    q = Decimal(1).scaleb(-decimals)
    return (sum(values, Decimal(0)) / len(values)).quantize(q, rounding=ROUND_HALF_UP)


def energy_summary(items: Sequence[dict[str, Any]], coefs: Coefficients,
                   boundary: BoundarySection | None = None,
                   manual: Sequence[dict[str, Any]] = (), expected: Iterable[str] = ()
                   ) -> dict[str, Any]:
    """综合能源消费总量 of a day's or month's items and manual entries (agent/accounting/totals.py),
    with the coefficients and the electricity convention it used."""
    s = totals.energy_total(items, manual, coefs, boundary or BoundarySection(), expected)
    used = {v: format_decimal(coefs.kgce[v]) for v in
            {p["variety"] for p in s["boundary"]} if v in coefs.kgce}
    s.update({
        "coefficients": dict(sorted(used.items())),  # kgce per base unit, as applied
        "code_coefficients": {c: format_decimal(k) for c, k in sorted(coefs.per_code.items())},
        "electricity_convention": coefs.electricity_convention,
        "electricity_coefficient": format_decimal(coefs.kgce["electricity"]),
    })
    return s


def month_body(month: str, tz: ZoneInfo, days: Sequence[dict[str, Any]], coefs: Coefficients,
               boundary: BoundarySection | None = None,
               month_manual: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A month from its days' bodies: every item's value is the exact sum of the days'.

    `days` are the daily bodies available (sealed or computed); a missing day, or a day where
    an item has no value, marks that item "incomplete". The total and unit consumption are
    computed again from the month's sums and the manual entries that cover the month: the days'
    entries, unless an entry for the whole month replaces them for its code (an invoice).
    """
    b = boundary or BoundarySection()
    expected = len(month_days(month))
    start = rfc3339(day_start_ms(month_days(month)[0], tz), tz)
    acc: dict[tuple[str, str, str], dict[str, Any]] = {}
    order: list[tuple[str, str, str]] = []
    for body in days:
        for it in body["items"]:
            if it.get("kind") in totals.COMPUTED_KINDS:
                continue
            key = (it["meter"], it["point"], it["dataCode"])
            if key not in acc:
                order.append(key)
                acc[key] = {"src": it, "values": [], "flags": set()}
            a = acc[key]
            a["flags"].update(it["flags"])
            if it["value"] != "":
                a["values"].append(Decimal(it["value"]))
    items = []
    for key in order:
        a = acc[key]
        src, values = a["src"], a["values"]
        flags = set(a["flags"])
        if len(values) < expected:
            flags.add(INCOMPLETE)
        if src["kind"] == "counter":
            value = sum(values, Decimal(0)) if values else None
        else:
            places = -min((v.as_tuple().exponent for v in values), default=0)
            value = mean(values, int(places))
        it = {k: src[k] for k in ("dataCode", "meter", "point", "variety", "unit", "kind")}
        it.update({
            "value": "" if value is None else format_decimal(value),
            "statType": STAT_MONTH, "inputType": INPUT_METER, "periodStart": start,
            "flags": sorted(flags), "days": len(values), "daysExpected": expected,
        })
        items.append(it)
    whole = {m["dataCode"] for m in month_manual}
    manual = [*month_manual, *(m for body in days for m in body.get("manual", [])
                               if m["dataCode"] not in whole)]
    declared = [*b.inputs, *b.outputs]
    summary = energy_summary(items, coefs, b, manual, expected=declared)
    items += totals.computed_items(summary, items, manual, b, STAT_MONTH, start, INPUT_METER)
    body = {"period": month, "period_start": start, "days": len(days),
            "days_expected": expected, "items": items, "manual": manual}
    body.update(summary)
    return body
