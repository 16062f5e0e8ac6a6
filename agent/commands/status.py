"""`energy-agent status`: per-meter health, today's completeness, backlog and last upload.

Reads the store read-only, so it is safe beside the running daemon and never repairs, migrates
or moves anything.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from agent.commands._common import add_config_argument, load_or_exit
from buffer.names import MQTT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from buffer.store import Store, StoreError

    cfg = load_or_exit(args.config)
    if not cfg.db_path.exists():
        print(f"error: no store at {cfg.db_path} — has `energy-agent run` started with this config?")
        return 1
    try:
        store = Store(cfg.db_path, (MQTT,), readonly=True)
    except StoreError as e:
        print(f"error: {e}")
        return 1
    try:
        report = collect(cfg, store, int(time.time() * 1000))
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(cfg, report)
    return 0


def collect(cfg: Any, store: Any, now_ms: int) -> dict[str, Any]:
    from agent.accounting.reports import completeness
    from agent.accounting.statistics import COMPLETENESS_MIN, day_start_ms, local_day
    from agent.runtime.read_plans import load_read_plan
    from buffer.retention import storage_alarm

    statuses = {s.meter: s for s in store.state.meter_statuses()}
    # The stored health carries last-good times of up to a minute ago; the samples committed
    # with the last poll ticks are newer (and cost the daemon no extra write).
    newest = store.readings.newest_good_ms()
    day = local_day(now_ms, cfg.tz)
    first = store.readings.first_reading_ts()
    since = first if first is not None and first > day_start_ms(day, cfg.tz) else None
    today = completeness(store, cfg, day, now_ms, since_ms=since)
    meters = []
    warnings = []
    for m in cfg.meter:
        s = statuses.get(m.name)
        ratios = [r for (meter, _), r in today.items() if meter == m.name]
        worst = min(ratios) if ratios else None
        meters.append({
            "meter": m.name, "bus": m.bus, "unit": m.unit if m.address is None else None,
            "address": m.address,  # DL/T 645 / CJ/T 188 meters: the nameplate number
            "state": "unknown" if s is None else ("online" if s.online else "offline"),
            "last_good_ms": max(filter(None, (s.last_good_ms if s else None, newest.get(m.name))), default=None),
            "errors_total": s.errors_total if s else 0,
            "last_error": s.last_error if s else None,
            "last_error_ms": s.last_error_ms if s else None,
            "completeness_today": worst,
            "read_plan": load_read_plan(store, m.name),
        })
        if s is not None and not s.online:
            warnings.append(f"meter {m.name}: offline — {s.last_error or 'no reply'}")
        if worst is not None and worst < COMPLETENESS_MIN:
            points = sorted(p for (meter, p), r in today.items() if meter == m.name and r < COMPLETENESS_MIN)
            warnings.append(f"meter {m.name}: completeness today {worst:.0%} < 90 % "
                            f"({', '.join(points)})")
    pending, oldest = store.outbox.backlog(MQTT)
    last_seq, last_at = store.outbox.last_delivered(MQTT)
    counters = store.state.counters()
    if oldest is not None and now_ms - oldest > 24 * 3600 * 1000:
        warnings.append(f"backlog: oldest unsent envelope is {_age(now_ms - oldest)} old — "
                        "the platform has not had today's data; check the link and the broker")
    for name in ("dropped_envelopes", "corrupt_envelopes", "rejected_envelopes", "corrupt_db_moved"):
        if counters.get(name):
            hint = " — `energy-agent resend` lists them" if name == "rejected_envelopes" else ""
            warnings.append(f"{name.replace('_', ' ')}: {counters[name]}{hint}")
    alarm = storage_alarm(store)
    if alarm is not None:
        warnings.append(f"storage alarm: {alarm['used_bytes']} bytes used, budget "
                        f"{alarm['budget_bytes']} — {alarm['reason']}")
    return {
        "now_ms": now_ms, "store": str(cfg.db_path), "store_bytes": store.size_bytes(),
        "storage_alarm": alarm,
        "meters": meters,
        # Set on the agent's first day: completeness counts from its first poll, not midnight.
        "completeness_since_ms": since,
        "backlog": {"pending": pending, "oldest_ms": oldest},
        "last_delivered": {"seq": last_seq, "at_ms": last_at},
        "next_seq": store.outbox.chain_head()[0],
        "counters": counters,
        "warnings": warnings,
    }


def print_report(cfg: Any, r: dict[str, Any]) -> None:
    now = r["now_ms"]

    def when(ms: int | None) -> str:
        if ms is None:
            return "never"
        return f"{datetime.fromtimestamp(ms / 1000, cfg.tz):%Y-%m-%d %H:%M:%S} ({_age(now - ms)} ago)"

    print(f"gateway {cfg.agent.gateway} · store {r['store']} ({r['store_bytes'] / 1e6:.1f} MB) · "
          f"{datetime.fromtimestamp(now / 1000, cfg.tz):%Y-%m-%d %H:%M:%S %z}")
    print()
    rows = [("METER", "BUS/UNIT", "STATE", "LAST GOOD READ", "ERRORS", "TODAY", "LAST ERROR")]
    for m in r["meters"]:
        c = m["completeness_today"]
        rows.append((m["meter"], f"{m['bus']}/{m['address'] or m['unit']}", m["state"], when(m["last_good_ms"]),
                     str(m["errors_total"]), "—" if c is None else f"{c:.0%}",
                     (m["last_error"] or "")[:80]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if r.get("completeness_since_ms"):
        print(f"TODAY counts from the agent's first poll, {when(r['completeness_since_ms'])}, not from midnight")
    for m in r["meters"]:
        if m.get("read_plan"):
            print(f"\nmeter {m['meter']} refuses some of its points; read as:")
            for line in m["read_plan"]:
                print(f"    {line}")
    print()
    b = r["backlog"]
    print(f"backlog: {b['pending']} envelope(s) pending"
          + (f", oldest sealed {when(b['oldest_ms'])}" if b["oldest_ms"] else ""))
    ld = r["last_delivered"]
    print("last delivered: " + (f"seq {ld['seq']} at {when(ld['at_ms'])}" if ld["seq"] else "nothing yet")
          + f"; next seq {r['next_seq']}")
    if r["warnings"]:
        print()
        for w in r["warnings"]:
            print(f"warning: {w}")


def _age(ms: int) -> str:
    from agent.runtime.conditions import duration

    return duration(ms / 1000)
