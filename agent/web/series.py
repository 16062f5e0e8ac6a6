"""Series for the charts: interval values of a day, daily values of a month, completeness
of items × days, and why a day fell short.

Sealed periods are read back from their envelopes (what the platform got); periods not sealed
yet are computed by the daemon's own Reporter (agent/web/data.py's read-only one).
"""

from __future__ import annotations

import itertools
import json
from datetime import date, timedelta
from typing import Any

from agent.accounting import statistics
from agent.config import Config
from agent.web.data import COMPLETENESS_MIN, ReadOnlyReporter, day_completeness
from buffer.store import Store
from drivers.base import Quality

MAX_OVERLAY_DAYS = 7
GAP_LIST = 20  # longest gaps listed for a day that fell short


def _find(items: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return next((it for it in items if f"{it['meter']}.{it['point']}" == key), None)


def interval_series(cfg: Config, store: Store, key: str, day: date, now_ms: int) -> dict[str, Any]:
    """One item's interval values on one local day: [{label, start_ms, value, flags, sealed}]."""
    rep = ReadOnlyReporter(cfg, store, None)
    grid = statistics.interval_bounds(day, cfg.tz, cfg.schedule.interval_minutes)
    ended = [s for s, e in itertools.pairwise(grid) if e <= now_ms]
    points: list[dict[str, Any]] = []
    if ended:
        labels = [statistics.interval_label(s, cfg.tz) for s in ended]
        sealed = {r.period: json.loads(r.payload)["body"]
                  for r in store.outbox.envelopes("interval", labels[0], labels[-1])}
        computed: dict[str, Any] = {}
        if any(lab not in sealed for lab in labels):
            step = cfg.schedule.interval_minutes * 60_000
            computed = rep.interval_bodies(ended[0], ended[-1] + step, now_ms)
        for s, lab in zip(ended, labels, strict=True):
            body = sealed.get(lab) or computed.get(lab)
            it = _find(body["items"], key) if body else None
            points.append({"label": lab[11:], "start_ms": s,
                           "value": None if it is None or it["value"] == "" else it["value"],
                           "flags": [] if it is None else it["flags"], "sealed": lab in sealed})
    return {"day": day.isoformat(), "item": key, "points": points}


def curves(cfg: Config, store: Store, key: str, days: list[date], now_ms: int) -> dict[str, Any]:
    item = next((it for it in statistics.reported_items(cfg) if f"{it.meter}.{it.point}" == key), None)
    if item is None:
        raise KeyError(key)
    return {"item": key, "dataCode": item.code, "unit": item.unit, "kind": item.kind,
            "interval_minutes": cfg.schedule.interval_minutes,
            "days": [interval_series(cfg, store, key, d, now_ms) for d in days[:MAX_OVERLAY_DAYS]]}


def day_bodies(cfg: Config, store: Store, month: str, now_ms: int) -> list[tuple[date, dict[str, Any] | None, bool]]:
    """(day, body, sealed) for each day of the month up to today; today is the day so far."""
    rep = ReadOnlyReporter(cfg, store, None)
    today = statistics.local_day(now_ms, cfg.tz)
    sealed = {r.period: json.loads(r.payload)["body"]
              for r in store.outbox.envelopes("daily", f"{month}-01", f"{month}-31")}
    since = rep.first_day() or today
    out: list[tuple[date, dict[str, Any] | None, bool]] = []
    for d in statistics.month_days(month):
        if d > today:
            break
        if d.isoformat() in sealed:
            out.append((d, sealed[d.isoformat()], True))
        elif since <= d:
            out.append((d, rep.day_body(d, now_ms), False))
        else:
            out.append((d, None, False))
    return out


def daily_bars(cfg: Config, store: Store, month: str, now_ms: int) -> dict[str, Any]:
    """Each day's value per item and total tce, for the month's bar charts."""
    days = []
    for d, body, sealed in day_bodies(cfg, store, month, now_ms):
        values = {}
        if body is not None:
            values = {f"{it['meter']}.{it['point']}": it["value"] for it in body["items"]}
        days.append({"day": d.isoformat(), "sealed": sealed, "values": values,
                     "total_tce": "" if body is None else body.get("total_tce", "")})
    return {"month": month, "days": days}


def completeness_grid(cfg: Config, store: Store, month: str, now_ms: int) -> dict[str, Any]:
    """Items × days: completeness 0-1 (None: no data expected yet), and the day's flags."""
    keys = [f"{it.meter}.{it.point}" for it in statistics.reported_items(cfg)]
    today = statistics.local_day(now_ms, cfg.tz)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    dates = []
    for d, body, sealed in day_bodies(cfg, store, month, now_ms):
        dates.append(d.isoformat())
        today_ratios = day_completeness(cfg, store, d, now_ms) if d == today else {}
        for k in keys:
            it = _find(body["items"], k) if body else None
            if d == today:
                meter, point = k.split(".", 1)
                ratio: float | None = today_ratios.get((meter, point))
            else:
                ratio = None if it is None or it.get("completeness", "") == "" else float(it["completeness"])
            rows[k].append({"day": d.isoformat(), "ratio": ratio, "sealed": sealed,
                            "flags": [] if it is None else it["flags"],
                            "samples": None if it is None else it.get("samples"),
                            "samplesExpected": None if it is None else it.get("samplesExpected")})
    return {"month": month, "days": dates, "line": COMPLETENESS_MIN,
            "items": [{"key": k, "cells": rows[k]} for k in keys]}


def gaps(cfg: Config, store: Store, key: str, day: date, now_ms: int) -> dict[str, Any]:
    """Why a day fell short: the stretches without a good read longer than two polls, the
    meter's error at the time, and clock steps."""
    meter, _, point = key.partition(".")
    start = statistics.day_start_ms(day, cfg.tz)
    end = min(statistics.day_start_ms(day + timedelta(days=1), cfg.tz), now_ms)
    poll_ms = int(cfg.schedule.poll_interval * 1000)
    rows = store.readings.readings_for(meter, point, start, end)
    good = [r.ts for r in rows if r.quality == Quality.GOOD and r.value is not None]
    bad = len(rows) - len(good)
    found = []
    edges = [start - poll_ms, *good, end]
    for a, b in itertools.pairwise(edges):
        if b - a > 2 * poll_ms:
            frm = a + poll_ms if a >= start else start  # the first poll that brought nothing
            found.append({"from_ms": frm, "to_ms": b, "minutes": round((b - frm) / 60_000, 1)})
    found.sort(key=lambda g: -g["to_ms"] + g["from_ms"])
    clock = [ts for _, _, ts, _ in store.state.events("clock", since_ms=start) if ts < end]
    return {"item": key, "day": day.isoformat(), "good_reads": len(good), "bad_reads": bad,
            "gaps": found[:GAP_LIST], "gap_minutes": round(sum(g["minutes"] for g in found), 1),
            "clock_steps": clock}
