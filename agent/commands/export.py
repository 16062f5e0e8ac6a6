"""`energy-agent export`: a day's or month's report as CSV — exactly what was (or will be)
uploaded. Sealed periods are read back from their envelopes; a period not sealed yet is computed
the same way the reporter will and marked "not yet sealed"."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from agent.commands._common import add_config_argument, load_or_exit

COLUMNS = ["type", "period", "status", "envelope", "dataCode", "meter", "point", "variety",
           "unit", "value", "statType", "inputType", "periodStart", "flags", "samples",
           "samplesExpected", "completeness", "note", "supersedes", "reason"]
NOT_SEALED = "not yet sealed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--day", metavar="YYYY-MM-DD", help="the day's value and its intervals")
    which.add_argument("--month", metavar="YYYY-MM", help="the month's value and its days")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")


def run(args: argparse.Namespace) -> int:
    from agent.accounting.reports import Reporter
    from buffer.store import Store, StoreError

    cfg = load_or_exit(args.config)
    path = Path(cfg.agent.data_dir) / "agent.db"
    if not path.exists():
        # Never create one: an empty store made here (by root, say) would stand in the way of
        # the agent's own.
        print(f"error: no store at {path} — has `energy-agent run` started with this config?",
              file=sys.stderr)
        return 1
    try:
        store = Store(path, readonly=True)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rows = list(export_rows(Reporter(cfg, store, None), store, day=args.day,
                                month=args.month, now_ms=int(time.time() * 1000)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as f:
            _write(f, rows)
    else:
        _write(sys.stdout, rows)
    return 0


def _write(out: TextIO, rows: list[dict[str, Any]]) -> None:
    w = csv.DictWriter(out, COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


def export_rows(rep: Any, store: Any, *, day: str | None, month: str | None,
                now_ms: int) -> Iterator[dict[str, Any]]:
    """CSV rows: the period's own report, its parts (intervals of a day, days of a month), the
    manual entries for it, then tce per variety and the total."""
    from agent.accounting import statistics
    from agent.accounting.manual import manual_entries

    today = statistics.local_day(now_ms, rep.tz)
    if day is not None:
        d = date.fromisoformat(day)
        if d > today:
            raise ValueError(f"day {day} has not begun yet")
        main = _report(store, "daily", day, lambda: rep.day_body(d, now_ms))
        grid = statistics.interval_bounds(d, rep.tz, rep.minutes)
        if d == today:  # so far: the intervals begun by now, the last one still open
            grid = [b for b in grid if b <= now_ms] + [min(b for b in grid if b > now_ms)]
        parts = _intervals(rep, store, grid, now_ms)
        period_from, period_to = day, day
    else:
        assert month is not None
        days = [x for x in statistics.month_days(month) if x < today]
        if not days:
            raise ValueError(f"month {month} has no ended day yet")
        main = _report(store, "monthly", month, lambda: rep.month_body(month, now_ms))
        parts = [_report(store, "daily", x.isoformat(), lambda x=x: rep.day_body(x, now_ms))
                 for x in days]
        period_from, period_to = month, month + "-99"
    for type_, period, status, env, body in [main, *parts]:
        for it in body["items"]:
            yield {"type": type_, "period": period, "status": status, "envelope": env, **it,
                   "flags": ";".join(it["flags"]), "supersedes": body.get("supersedes", ""),
                   "reason": it.get("reason") or body.get("restated", "")}
    # The history of restatements: every earlier envelope of the period, with what replaced it.
    kind, period = ("daily", day) if day is not None else ("monthly", month)
    rows = store.outbox.envelopes(kind, period, period)
    for old, newer in itertools.pairwise(rows):
        body = json.loads(old.payload)["body"]
        for it in body["items"]:
            yield {"type": kind, "period": period, "status": f"superseded by {newer.id}",
                   "envelope": old.id, **it, "flags": ";".join(it["flags"]),
                   "supersedes": body.get("supersedes", ""),
                   "reason": json.loads(newer.payload)["body"].get("restated", "")}
    for env, it in manual_entries(store, period_from, period_to):
        yield {"type": "manual", "period": it["period"], "status": "sealed", "envelope": env,
               **it}
    type_, period, status, env, body = main
    for variety, tce in body.get("tce", {}).items():
        yield {"type": "tce", "period": period, "status": status, "envelope": env,
               "variety": variety, "unit": "tce", "value": tce}
    yield {"type": "total_tce", "period": period, "status": status, "envelope": env,
           "unit": "tce", "value": body.get("total_tce", ""),
           "note": f"electricity {body.get('electricity_convention', '')} value"}


def _report(store: Any, type_: str, period: str, compute: Any) -> tuple[str, str, str, str, Any]:
    rows = store.outbox.envelopes(type_, period, period)
    if rows:  # the newest envelope of a period is its final value (a restatement)
        status = "sealed" if len(rows) == 1 else f"sealed, restated {len(rows) - 1}×"
        return type_, period, status, rows[-1].id, json.loads(rows[-1].payload)["body"]
    return type_, period, NOT_SEALED, "", compute()


def _intervals(rep: Any, store: Any, grid: list[int], now_ms: int) -> list[Any]:
    from agent.accounting import statistics

    labels = [statistics.interval_label(s, rep.tz) for s in grid[:-1]]
    sealed = {r.period: r for r in store.outbox.envelopes("interval", labels[0], labels[-1])}  # newest wins
    computed: dict[str, Any] = {}
    if any(lab not in sealed for lab in labels):
        computed = rep.interval_bodies(grid[0], grid[-1], now_ms)
    out = []
    for lab in labels:
        if lab in sealed:
            r = sealed[lab]
            out.append(("interval", lab, "sealed", r.id, json.loads(r.payload)["body"]))
        else:
            out.append(("interval", lab, NOT_SEALED, "", computed[lab]))
    return out


