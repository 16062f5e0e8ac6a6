"""Manual entry: what no meter measures (coal received, product output, output value), and
recorded meter replacements.

A manual value is sealed as its own `manual` envelope with input type 5 (the provincial
interface's `inputType`: 4 field meter, 5 manual entry; github.com/OceanWht/yn-nhjc). A
correction is a new manual envelope naming the id it supersedes — nothing is ever deleted, so
the platform and an auditor see both the mistake and its fix.

Validation is pure (`manual_body`, `replacement_event`); `seal_manual` is the thin store part,
safe while the daemon runs: the sealer takes the seq inside the store's write transaction, so
the daemon sealing at the same moment only makes one of the two wait for the lock.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from agent.accounting import statistics
from agent.accounting.coal import CoalError, coefficients, format_decimal
from agent.config import DATA_CODE, Config
from agent.config.boundary import role_of
from agent.config.codes import variety_of
from agent.protocol.sealer import Sealer
from buffer.store import Store

DECIMAL = re.compile(r"^-?\d{1,15}(\.\d{1,9})?$")
REPLACEMENT_EVENT = "replacement"


class ManualError(ValueError):
    """An entry that cannot be accepted; the message says what is expected."""


def parse_value(text: str) -> Decimal:
    if not DECIMAL.match(text.strip()):
        raise ManualError(f"value: expected a decimal number like 1140.10, got {text!r}")
    return Decimal(text.strip())


def parse_code(code: str) -> str:
    if not DATA_CODE.match(code):
        raise ManualError(f"data code: expected PP-UU-EEEE-CCTTTT-DD (digits), got {code!r}")
    return code


def manual_body(code: str, value: str, unit: str, *, tz: ZoneInfo, entered_ms: int,
                month: str | None = None, day: str | None = None, note: str = "",
                supersedes: str = "", variety: str = "") -> tuple[dict[str, Any], str]:
    """(body, period) of one manual value for a month ("2026-11") or a day ("2026-11-21")."""
    parse_code(code)
    v = parse_value(value)
    if not unit.strip():
        raise ManualError("unit: required (e.g. t, kg, kWh, 10^4 CNY)")
    if (month is None) == (day is None):
        raise ManualError("give exactly one of --period YYYY-MM or --day YYYY-MM-DD")
    if month is not None:
        if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
            raise ManualError(f"period: expected YYYY-MM, got {month!r}")
        period, first, stat = month, date.fromisoformat(month + "-01"), statistics.STAT_MONTH
    else:
        try:
            first = date.fromisoformat(day or "")
        except ValueError:
            raise ManualError(f"day: expected YYYY-MM-DD, got {day!r}") from None
        period, stat = first.isoformat(), statistics.STAT_DAY
    start = statistics.day_start_ms(first, tz)
    if start > entered_ms:
        raise ManualError(f"period {period} has not started yet")
    item = {
        "dataCode": code, "variety": variety, "unit": unit.strip(), "value": format_decimal(v),
        "statType": stat, "inputType": statistics.INPUT_MANUAL,
        "periodStart": statistics.rfc3339(start, tz), "period": period,
        "entered": statistics.rfc3339(entered_ms, tz), "note": note, "supersedes": supersedes,
    }
    return {"items": [item]}, period


def seal_manual(store: Store, sealer: Sealer, body: dict[str, Any], period: str) -> int:
    """Seal a manual body; a named superseded id must be an earlier manual envelope."""
    sup = body["items"][0]["supersedes"]
    if sup and not any(r.id == sup for r in store.outbox.envelopes("manual")):
        raise ManualError(f"--supersedes {sup}: no manual entry with that id (see `export`)")
    return sealer.seal("manual", body, period=period)


def added_tce(cfg: Config, code: str, variety: str, unit: str, value: str) -> str | None:
    """Tonnes of standard coal a manual value adds to 综合能源消费总量, as shown before it is
    saved: negative for an output of the boundary; None when it does not count (a sub-meter,
    not an energy or working-medium class, or no variety known for it)."""
    parse_code(code)
    v = parse_value(value)
    role = role_of(code, cfg.boundary)
    variety = variety or variety_of(code) or ""
    if not variety or role not in ("input", "output"):
        return None
    try:
        t = coefficients(cfg.coefficients, cfg.coefficient).tce(variety, unit.strip(), v, code=code)
    except CoalError as e:
        raise ManualError(str(e)) from None
    return format_decimal(t if role == "input" else -t)


def enter_value(cfg: Config, code: str, value: str, unit: str, *, entered_ms: int,
                month: str | None = None, day: str | None = None, note: str = "",
                supersedes: str = "", variety: str = "") -> tuple[str, dict[str, Any], str]:
    """Validate, sign and seal one manual value into the store: (envelope id, body, period).
    What `energy-agent enter` and the web page's manual entry both run."""
    from agent.config.destinations import destination_types
    from agent.protocol.signing import KeyFileError, load_signer
    from buffer.store import StoreError

    body, period = manual_body(code, value, unit, tz=cfg.tz, entered_ms=entered_ms, month=month,
                               day=day, note=note, supersedes=supersedes, variety=variety)
    try:
        # An operator's action: root may use the key the service user owns (run may not).
        signer = load_signer(cfg.signing.key_file, cfg.signing.key_id, any_owner=os.geteuid() == 0)
        store = Store(cfg.db_path, destination_types(cfg))
    except (KeyFileError, StoreError) as e:
        raise ManualError(str(e)) from None
    try:
        seq = seal_manual(store, Sealer(cfg, store, signer), body, period)
        row = next(r for r in store.outbox.envelopes("manual", period, period) if r.seq == seq)
    except StoreError as e:
        raise ManualError(str(e)) from None
    finally:
        store.close()
    return row.id, body, period


def parse_time(text: str, tz: ZoneInfo) -> int:
    """Unix ms of "2026-11-21T12:00" (local time) or an RFC 3339 time with offset."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ManualError(f"time: expected YYYY-MM-DDTHH:MM (local time), got {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz)
    return int(t.timestamp() * 1000)


def replacement_event(cfg: Config, meter: str, point: str, old_final: str, new_initial: str,
                      at_ms: int) -> dict[str, Any]:
    """The event data `energy-agent replace-meter` records (read by agent/accounting/reports.py)."""
    try:
        m = cfg.meter_named(meter)
    except StopIteration:
        raise ManualError(f"meter {meter!r} is not in the config") from None
    p = next((p for p in m.points if p.name == point), None)
    if p is None:
        raise ManualError(f"meter {meter!r} has no point {point!r}")
    if p.kind != "counter":
        raise ManualError(f"{meter}.{point} is not a counter: only counters need a replacement")
    return {"meter": meter, "point": point, "at_ms": at_ms,
            "old_final": format_decimal(parse_value(old_final)),
            "new_initial": format_decimal(parse_value(new_initial))}


def record_replacement(store: Store, data: dict[str, Any]) -> int:
    return store.state.add_event(REPLACEMENT_EVENT, int(data["at_ms"]), data)


def manual_entries(store: Store, period_from: str | None = None,
                   period_to: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(envelope id, item) of every sealed manual value, oldest first."""
    out = []
    for r in store.outbox.envelopes("manual", period_from, period_to):
        for it in json.loads(r.payload)["body"]["items"]:
            out.append((r.id, it))
    return out
