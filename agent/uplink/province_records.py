"""Sealed envelopes as the provincial interface's records and data items (pure functions).

Every record comes from a sealed envelope's body — the bytes the outbox holds and the MQTT
destination sends — never from the raw readings: what the province receives is always what
was signed. Record fields (docs/province.md gives the sources):

    {"dataCode": "00-00-0000-020201-10", "dataValue": "1140.10", "inputType": 4, "statType": 1,
     "statDate": "2026-11-21 00:00:00", "uploadDate": "2026-11-22 09:30:00", "scope": 1,
     "valid": true}

`statDate` is the period start in local time, `uploadDate` when it is sent. An item with no
value ("" in the body: no data in the period) has no record; the body still shows the gap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from agent.config.schema import ProvinceHttpsDestination

STAT_OF_TYPE = {"interval": 0, "daily": 1, "monthly": 2}
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Flags that make a value an estimate the platform should not take at face value.
INVALID_FLAGS = frozenset({"backwards", "spike", "reset", "clock", "incomplete"})
MAX_VALUE_CHARS = 32


class RecordError(ValueError):
    """An envelope whose body cannot be turned into records (never expected: we sealed it)."""


def envelope_records(payload: bytes, scope: int, upload_date: str) -> tuple[str, list[dict[str, Any]]]:
    """(envelope type, records) of one sealed envelope."""
    try:
        env = json.loads(payload)
        type_, body = env["type"], env["body"]
        items = body["items"] if type_ in (*STAT_OF_TYPE, "manual") else []
    except (ValueError, KeyError, TypeError) as e:
        raise RecordError(f"envelope body not understood: {type(e).__name__}: {e}") from None
    if not isinstance(items, list):
        raise RecordError("envelope body: items is not a list")
    records = []
    for it in items:
        rec = item_record(it, scope, upload_date)
        if rec is not None:
            records.append(rec)
    return str(type_), records


def item_record(item: Any, scope: int, upload_date: str) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        raise RecordError("envelope body: an item is not an object")
    value = item.get("value", "")
    if value == "" or not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
        return None
    try:
        code = str(item["dataCode"])
        stat_type, input_type = int(item["statType"]), int(item["inputType"])
        start = datetime.fromisoformat(str(item["periodStart"]))
    except (KeyError, ValueError, TypeError) as e:
        raise RecordError(f"envelope body: item {item.get('dataCode')!r}: {e}") from None
    flags = item.get("flags") or []
    return {
        "dataCode": code,
        "dataValue": value,
        "inputType": input_type,
        "statType": stat_type,
        "statDate": start.strftime(DATE_FORMAT),  # the local wall time the period starts
        "uploadDate": upload_date,
        "scope": scope,
        "valid": not (set(flags) & INVALID_FLAGS),
    }


def chunks(records: Sequence[dict[str, Any]], size: int) -> list[Sequence[dict[str, Any]]]:
    return [records[i:i + size] for i in range(0, len(records), size)] or [[]]


# -- data items (dataCollectConfigure) ---------------------------------------------------------


def data_items(dest: ProvinceHttpsDestination, enterprise_code: str, metered: Iterable[Any],
               stat_types: Iterable[int], computed: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """What to register: each metered item (statistics.Item) once per stat type the
    destination sends, the computed daily/monthly items (`computed`: (code, name) of the
    comprehensive total and each product's unit consumption), then the configured extra items
    (manual entries). A configured item with the same code gives it its name and bounds."""
    extra = {it.code: it for it in dest.item}
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    stats = sorted(set(stat_types))
    for m in metered:
        conf = extra.get(m.code)
        name = (conf.name if conf and conf.name else f"{m.meter}/{m.point}")
        lo, hi = (conf.min, conf.max) if conf else ("0", "999999999")
        for st in stats:
            if (m.code, st) not in seen:
                seen.add((m.code, st))
                out.append(_item(enterprise_code, m.code, name, 4, st, lo, hi, dest.scope))
    for code, name in computed:
        conf = extra.get(code)
        lo, hi = (conf.min, conf.max) if conf else ("0", "999999999")
        for st in stats:
            if st in (1, 2) and (code, st) not in seen:
                seen.add((code, st))
                out.append(_item(enterprise_code, code, conf.name if conf and conf.name else name, 4, st,
                                 lo, hi, dest.scope))
    for it in dest.item:
        for st in it.stat_types:
            if (it.code, st) not in seen:
                seen.add((it.code, st))
                out.append(_item(enterprise_code, it.code, it.name or it.code, it.input_type, st,
                                 it.min, it.max, dest.scope))
    return out


def _item(enterprise: str, code: str, name: str, input_type: int, stat_type: int, lo: str,
          hi: str, scope: int) -> dict[str, Any]:
    pp, uu, eeee, cctttt, dd = code.split("-")
    return {
        "enterpriseCode": enterprise,
        "dataCode": code,
        "collectItemName": name[:30],  # the clients' column holds 30 characters
        "processCode": pp,
        "processUnitCode": uu,
        "equipmentCode": eeee,
        "energyClassCode": cctttt[:2],
        "energyTypeCode": cctttt[2:],
        "dataUsageCode": dd,
        "inputType": input_type,
        "statType": stat_type,
        "dataValueMin": lo,
        "dataValueMax": hi,
        "scope": scope,
        "collectSystemName": "energy-agent",
    }


def items_hash(items: Sequence[dict[str, Any]]) -> str:
    """Identifies a registered set: the data items are registered again when it changes."""
    text = json.dumps(sorted(items, key=lambda i: (i["dataCode"], i["statType"])),
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
