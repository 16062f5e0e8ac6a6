"""What the pages and the JSON endpoints show, read from the config and the store.

Every page's numbers come from here (and agent/web/series.py for the per-day and per-interval
series), as plain dicts that go out as JSON unchanged and that the HTML pages render: a SCADA
reading /api/… sees exactly what the energy manager sees. Nothing here writes; the store is
opened read-only by the caller (agent/web/app.py) for each request.

The statistics are the ones the daemon seals (agent/accounting/reports.py): a day or month
already sealed is read back from its envelope, one not sealed yet is computed the same way.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import date
from decimal import Decimal
from typing import Any

from agent.accounting import statistics
from agent.accounting.manual import manual_entries
from agent.accounting.reports import SINCE_KEY, Reporter, completeness
from agent.accounting.totals import INCOMPLETE, TOTAL_KIND, UNIT_KIND
from agent.config import Config
from agent.protocol.sealer import BUILD_DATE_MS, CLOCK_BEHIND_MS
from buffer.store import Store
from drivers.base import Quality
from drivers.timing import cycle_seconds, dead_meter_seconds

COMPLETENESS_MIN = statistics.COMPLETENESS_MIN
DISK_WARN = 0.80  # of storage.budget_mb
BACKLOG_WARN_MS = 3_600_000  # an unsent envelope older than this: the destination is failing
CHAIN_CHECK = 200  # newest envelopes whose chain and signatures `deliveries` verifies
CLOCK_EVENT = "clock"


class ReadOnlyReporter(Reporter):
    """The daemon's Reporter, computing only: it never records the first reported day (the
    daemon does), so a store opened read-only is never written."""

    def _since(self, now_ms: int) -> date | None:
        return self.first_day()

    def first_day(self) -> date | None:
        """The first day the daemon reports (None before its first report run)."""
        text = self.store.state.get(SINCE_KEY)
        return date.fromisoformat(text) if text else None


def items(cfg: Config) -> list[dict[str, str]]:
    """The reported items (points with a data code): the choices of the pages' item menus."""
    return [{"key": f"{it.meter}.{it.point}", "meter": it.meter, "point": it.point,
             "dataCode": it.code, "variety": it.variety, "unit": it.unit, "kind": it.kind}
            for it in statistics.reported_items(cfg)]


def destinations(store: Store) -> list[str]:
    """Every configured destination the store keeps delivery state for (the daemon registers
    them; one dropped from the config keeps its row but is no longer shown)."""
    rows = store.rows("SELECT destination FROM delivery ORDER BY destination")
    return [str(r[0]) for r in rows if r[0] in store.destinations]


def last_reading_ms(store: Store) -> int | None:
    return store.readings.last_reading_ts()


# -- overview ---------------------------------------------------------------------------------


def today_body(cfg: Config, store: Store, now_ms: int) -> dict[str, Any]:
    """Today so far: each counter from midnight (or its first read today) to its last read."""
    rep = ReadOnlyReporter(cfg, store, None)
    return rep.day_body(statistics.local_day(now_ms, cfg.tz), now_ms)


def month_to_date(cfg: Config, store: Store, now_ms: int, today: dict[str, Any]) -> dict[str, Any]:
    """The month's ended days (sealed or computed) plus today so far, per item and in tce."""
    rep = ReadOnlyReporter(cfg, store, None)
    month = statistics.month_of(statistics.local_day(now_ms, cfg.tz))
    body = rep.month_body(month, now_ms)
    values: dict[str, Decimal] = {}
    for it in [*body["items"], *today["items"]]:
        if it["kind"] == "counter" and it["value"] != "":
            key = f"{it['meter']}.{it['point']}"
            values[key] = values.get(key, Decimal(0)) + Decimal(it["value"])
    tce: dict[str, Decimal] = {}
    for part in (body, today):
        for v, t in part.get("tce", {}).items():
            tce[v] = tce.get(v, Decimal(0)) + Decimal(t)
    return {"month": month, "days_ended": body["days"],
            "values": {k: f"{v:f}" for k, v in values.items()},
            "tce": {v: f"{t:f}" for v, t in sorted(tce.items())},
            "total_tce": f"{sum(tce.values(), Decimal('0.0000')):f}"}


def day_completeness(cfg: Config, store: Store, day: date, now_ms: int) -> dict[tuple[str, str], float]:
    """Completeness per item of a day so far, as `energy-agent status` counts it: on the agent's
    first day, from its first poll."""
    first = store.readings.first_reading_ts()
    since = first if first is not None and first > statistics.day_start_ms(day, cfg.tz) else None
    return completeness(store, cfg, day, now_ms, since_ms=since)


def overview(cfg: Config, store: Store, now_ms: int) -> dict[str, Any]:
    today = today_body(cfg, store, now_ms)
    ratios = day_completeness(cfg, store, statistics.local_day(now_ms, cfg.tz), now_ms)
    rows = []
    for it in today["items"]:
        ratio = ratios.get((it["meter"], it["point"]))
        # The total and unit consumption are items without a meter: keyed by their code.
        key = f"{it['meter']}.{it['point']}" if it["meter"] else it["dataCode"]
        rows.append({"key": key, "dataCode": it["dataCode"],
                     "meter": it["meter"], "point": it["point"], "variety": it["variety"],
                     "unit": it["unit"], "kind": it["kind"], "value": it["value"],
                     "flags": it["flags"], "completeness": ratio,
                     "below_line": ratio is not None and ratio < COMPLETENESS_MIN})
    return {
        "now_ms": now_ms, "day": today["period"], "gateway": cfg.agent.gateway,
        "enterprise": cfg.agent.enterprise, "items": rows,
        "tce": today.get("tce", {}), "total_tce": today.get("total_tce", ""),
        "electricity_convention": today.get("electricity_convention", ""),
        "month_to_date": month_to_date(cfg, store, now_ms, today),
        "sealed": sealed_totals(store),
        "completeness_line": COMPLETENESS_MIN,
        "alarms": alarms(cfg, store, now_ms, rows),
    }


def sealed_totals(store: Store) -> dict[str, dict[str, Any] | None]:
    """综合能源消费总量 and each product's unit consumption of the newest sealed day and month,
    as their envelopes state them: the total item, with `incomplete` and its reason; the
    newest envelope of a period is its final value (a restatement, agent/accounting/restate.py).
    None: no such envelope yet."""
    out: dict[str, dict[str, Any] | None] = {}
    for key, type_ in (("day", "daily"), ("month", "monthly")):
        # Periods are ISO dates, so the newest is the greatest; a restatement of an older one
        # may be the newest envelope, so the period is looked up first, its final row second.
        periods = store.outbox.sealed_periods(type_, "0000", "9999")
        rows = store.outbox.envelopes(type_, max(periods), max(periods)) if periods else []
        if not rows:
            out[key] = None
            continue
        body = json.loads(rows[-1].payload)["body"]
        total = next((it for it in body.get("items", []) if it.get("kind") == TOTAL_KIND), None)
        out[key] = {
            "period": body.get("period", rows[-1].period), "envelope": rows[-1].id,
            "restatements": len(rows) - 1, "supersedes": body.get("supersedes", ""),
            "restated": _clip(body.get("restated", ""), 500),
            "dataCode": "" if total is None else total["dataCode"],
            "total_tce": "" if total is None else total["value"],
            "incomplete": total is not None and INCOMPLETE in total.get("flags", []),
            "reason": "" if total is None else _clip(total.get("reason", ""), 1000),
            "unit_consumption": [
                {"dataCode": it["dataCode"], "product": it.get("product", ""), "value": it["value"],
                 "unit": it["unit"], "output": it.get("output", ""),
                 "incomplete": INCOMPLETE in it.get("flags", []),
                 "reason": _clip(it.get("reason", ""), 1000)}
                for it in body.get("items", []) if it.get("kind") == UNIT_KIND],
        }
    return out


def alarms(cfg: Config, store: Store, now_ms: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alarm: kind, subject, detail and what to do (the page translates kind and action)."""
    out: list[dict[str, Any]] = []
    last = last_reading_ms(store)
    poll_ms = cfg.schedule.poll_interval * 1000
    if last is None or now_ms - last > max(3 * poll_ms, 120_000):
        out.append({"kind": "not_polling", "subject": "energy-agent",
                    "detail": "no reading yet" if last is None else f"last reading {(now_ms - last) // 1000} s ago",
                    "action": "not_polling"})
    for s in store.state.meter_statuses():
        if not s.online:
            out.append({"kind": "meter_offline", "subject": f"{s.meter} ({s.bus})",
                        "detail": _clip(s.last_error or "no reply"), "action": "meter_offline"})
    for r in rows:
        if r["below_line"]:
            out.append({"kind": "completeness", "subject": f"{r['dataCode']} {r['key']}",
                        "detail": f"{r['completeness']:.1%} < 90 %", "action": "completeness"})
    used, budget = store.used_bytes(), int(cfg.storage.budget_mb * 1e6)
    if used > DISK_WARN * budget:
        out.append({"kind": "disk", "subject": str(cfg.db_path),
                    "detail": f"{used / 1e6:.0f} MB of {budget / 1e6:.0f} MB", "action": "disk"})
    if now_ms < BUILD_DATE_MS or (last is not None and now_ms < last - CLOCK_BEHIND_MS):
        out.append({"kind": "clock", "subject": "clock", "detail": "wall clock is behind the stored data",
                    "action": "clock"})
    for _, _, ts, data in store.state.events(CLOCK_EVENT, since_ms=now_ms - 86_400_000):
        out.append({"kind": "clock_step", "subject": "clock",
                    "detail": _clip(json.dumps(data, ensure_ascii=False)), "action": "clock_step", "at_ms": ts})
    for d in destinations(store):
        pending, oldest = store.outbox.backlog(d)
        if oldest is not None and now_ms - oldest > BACKLOG_WARN_MS:
            out.append({"kind": "destination", "subject": d,
                        "detail": f"{pending} unsent, oldest {(now_ms - oldest) // 60_000} min",
                        "action": "destination"})
        if store.outbox.rejected(d):
            out.append({"kind": "set_aside", "subject": d,
                        "detail": f"{len(store.outbox.rejected(d))} set aside", "action": "set_aside"})
    return out


# -- meters -----------------------------------------------------------------------------------


def meters(cfg: Config, store: Store, now_ms: int) -> dict[str, Any]:
    statuses = {s.meter: s for s in store.state.meter_statuses()}
    out = []
    for m in cfg.meter:
        bus = cfg.bus_named(m.bus)
        s = statuses.get(m.name)
        values = []
        for p in m.points:
            last = _last_good(store, m.name, p.name, now_ms, cfg.schedule.poll_interval)
            values.append({"point": p.name, "unit": p.unit, "kind": p.kind, "code": p.code or "",
                           "value": None if last is None else round(last.value, p.value_decimals),
                           "ts_ms": None if last is None else last.ts})
        state = "unknown"
        if s is not None:
            state = "online"
            if not s.online:
                retry = (s.last_error_ms or 0) + bus.offline_cooldown * 1000
                state = "cooldown" if now_ms < retry else "offline"
        out.append({"meter": m.name, "bus": m.bus, "unit": m.address or m.unit, "state": state,
                    "last_good_ms": s.last_good_ms if s else None,
                    "errors_total": s.errors_total if s else 0,
                    "consecutive_failures": s.consecutive_failures if s else 0,
                    "last_error": _clip(s.last_error) if s and s.last_error else None,
                    "last_error_ms": s.last_error_ms if s else None,
                    "values": values})
    return {"now_ms": now_ms, "meters": out, "buses": buses(cfg)}


def _last_good(store: Store, meter: str, point: str, now_ms: int, poll_s: float) -> Any:
    """The newest good reading of the last 10 minutes (at least 10 polls): the newest few polls
    first, then windows four times as long, so a meter that answers costs a handful of rows."""
    floor = now_ms - int(max(10 * poll_s, 600) * 1000)
    end, span = now_ms + 1, int(4 * poll_s * 1000)
    while end > floor:
        start = max(floor, end - span)
        rows = store.readings.readings_for(meter, point, start, end)
        found = next((r for r in reversed(rows) if r.quality == Quality.GOOD and r.value is not None), None)
        if found is not None:
            return found
        end, span = start, 4 * span
    return None


def buses(cfg: Config) -> list[dict[str, Any]]:
    """Per line: bus time per poll cycle (every meter answering; and with one silent meter)
    against the poll interval (drivers/timing.py)."""
    out = []
    for b in cfg.bus:
        ms = [m for m in cfg.meter if m.bus == b.name]
        busy = sum(cycle_seconds(b, m) for m in ms)
        out.append({"bus": b.name, "kind": b.kind, "meters": len(ms),
                    "cycle_s": round(busy, 4), "one_dead_s": round(busy + dead_meter_seconds(b), 4),
                    "poll_interval_s": cfg.schedule.poll_interval,
                    "load": round(busy / cfg.schedule.poll_interval, 4)})
    return out


# -- deliveries -------------------------------------------------------------------------------


def deliveries(cfg: Config, store: Store, now_ms: int, public_key: bytes | None) -> dict[str, Any]:
    out = []
    for d in destinations(store):
        pending, oldest = store.outbox.backlog(d)
        last_seq, last_ms = store.outbox.last_delivered(d)
        out.append({"destination": d, "pending": pending, "oldest_ms": oldest,
                    "last_seq": last_seq, "last_ms": last_ms,
                    "failing": oldest is not None and now_ms - oldest > BACKLOG_WARN_MS,
                    "set_aside": [{"seq": s, "reason": _clip(r), "ts_ms": t} for s, r, t in store.outbox.rejected(d)]})
    next_seq, _ = store.outbox.chain_head()
    return {"now_ms": now_ms, "destinations": out, "chain": {"last_seq": next_seq - 1,
                                                             **verify_chain(store, public_key)},
            "counters": store.state.counters()}


def verify_chain(store: Store, public_key: bytes | None, newest: int = CHAIN_CHECK) -> dict[str, Any]:
    """Check the newest envelopes: each `prev` is the SHA-256 of the one before, and (with the
    signing key's public half) each signature holds. Older envelopes may be pruned; the check
    starts at the oldest of those read."""
    rows = store.rows("SELECT o.seq, p.payload FROM outbox o JOIN payloads p ON p.seq = o.seq"
                      " ORDER BY o.seq DESC LIMIT ?", (newest,))
    rows.reverse()
    key = None
    if public_key is not None:
        from nacl.signing import VerifyKey

        key = VerifyKey(public_key)
    prev_seq, prev_hash = None, None
    for seq, payload in rows:
        payload = bytes(payload)
        fields = _chain_fields(payload)
        if fields is None:
            return {"verified": False, "checked": len(rows), "problem": f"seq {seq}: not an envelope"}
        prev, signed, sig = fields
        if prev_seq == seq - 1 and prev != prev_hash:
            return {"verified": False, "checked": len(rows),
                    "problem": f"seq {seq}: prev is not the hash of seq {seq - 1}"}
        if key is not None and not _signature_holds(key, signed, sig):
            return {"verified": False, "checked": len(rows), "problem": f"seq {seq}: bad signature"}
        prev_seq, prev_hash = seq, hashlib.sha256(payload).hexdigest()
    return {"verified": True, "checked": len(rows), "signatures": key is not None,
            "first_checked": rows[0][0] if rows else None, "problem": None}


def _chain_fields(payload: bytes) -> tuple[str, bytes, bytes] | None:
    """(prev, signed bytes, signature) of an envelope without parsing its (large) body.

    The payload is RFC 8785 canonical JSON with sorted keys, so the top-level members after
    "body" are created … prev, seq, sig, type, v: the last `"prev":"` and `,"sig":"` are the
    top-level ones (a string inside the body has its quotes escaped), and the signed form —
    the envelope without `sig` — is the payload with that one member cut out."""
    p = payload.rfind(b'"prev":"')
    s = payload.rfind(b',"sig":"')
    if p < 0 or s < p:
        return None
    end = payload.find(b'"', s + 8)
    if end < 0:
        return None
    try:
        return (payload[p + 8:p + 72].decode("ascii"), payload[:s] + payload[end + 1:],
                base64.b64decode(payload[s + 8:end], validate=True))
    except (UnicodeDecodeError, ValueError):
        return None


def _signature_holds(key: Any, signed: bytes, sig: bytes) -> bool:
    from nacl.exceptions import BadSignatureError

    try:
        key.verify(signed, sig)
        return True
    except (BadSignatureError, ValueError):
        return False


# -- manual entries ---------------------------------------------------------------------------


def manual_history(store: Store) -> list[dict[str, Any]]:
    """Every sealed manual value, newest first; a correction names the id it supersedes and
    the superseded entry names its correction."""
    entries = [{"id": env, **it} for env, it in manual_entries(store)]
    corrected = {e["supersedes"]: e["id"] for e in entries if e.get("supersedes")}
    for e in entries:
        e["superseded_by"] = corrected.get(e["id"], "")
    return list(reversed(entries))


def _clip(text: str | None, n: int = 200) -> str:
    """Error text from a meter or a broker is hostile: bounded and without control characters."""
    if not text:
        return ""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= n else clean[: n - 1] + "…"
