"""The worked month of docs/accounting.md, end to end: a small site with coal entered by hand,
electricity bought and sold, a sub-meter and one product. The figures asserted here are the
ones the document computes by hand."""

from __future__ import annotations

import json
from pathlib import Path

from agent.accounting.manual import manual_body, seal_manual
from agent.accounting.reports import Reporter
from agent.config import load_config
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from buffer.store import Store
from drivers.base import Quality, Reading
from tests.test_reports import TZ, ms
from tests.test_totals import HEAD, METER

QUARTER = 15 * 60_000
# name, data code, kWh a day
SITE = [("incomer", "00-00-0000-020201-10", 4000), ("to-neighbour", "00-00-0000-020201-20", 500),
        ("workshop", "01-00-0000-020201-30", 2500)]
COAL, PRODUCT = "00-00-0000-010104-10", "00-00-0000-040001-00"


def test_worked_month(tmp_path: Path):
    text = HEAD.format(dir=tmp_path) + f'[boundary]\ninputs = ["{COAL}"]\n'
    for i, (name, code, _) in enumerate(SITE):
        text += METER.format(name=name, unit=i + 1, code=code)
    (tmp_path / "agent.toml").write_text(text)
    cfg = load_config(tmp_path / "agent.toml")
    generate_key(cfg.signing.key_file)
    store = Store(tmp_path / "agent.db")
    try:
        # Every 15 minutes from 1 Nov 00:00 to 1 Dec 01:00, each meter at a steady rate.
        start, end = ms("2026-11-01T00:00"), ms("2026-12-01T01:00")
        rows = []
        for name, _, per_day in SITE:
            per_q = per_day / 96
            rows += [Reading(name, "kwh", t, round(10_000 + per_q * (t - start) / QUARTER, 2),
                             Quality.GOOD) for t in range(start, end, QUARTER)]
        store.readings.add_readings(rows)
        sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file),
                        clock=lambda: ms("2026-12-01T01:10") / 1000)
        for code, value, unit, variety, note in [
                (COAL, "180.50", "t", "raw_coal", "invoice 2026-11 (weighbridge total)"),
                (PRODUCT, "1200", "t", "", "production report 2026-11")]:
            body, period = manual_body(code, value, unit, tz=TZ, entered_ms=ms("2026-12-01T00:30"),
                                       month="2026-11", variety=variety, note=note)
            seal_manual(store, sealer, body, period)
        Reporter(cfg, store, sealer).seal_due(ms("2026-12-01T01:10"))
        (row,) = store.outbox.envelopes("monthly", "2026-11", "2026-11")
        month = json.loads(row.payload)["body"]
        daily = store.outbox.envelopes("daily", "2026-11-15", "2026-11-15")
        sizes = {"monthly": len(row.payload), "daily": len(daily[0].payload),
                 "interval": len(store.outbox.envelopes("interval")[0].payload)}
    finally:
        store.close()
    print(json.dumps({k: month[k] for k in ("total_tce", "total_status", "tce", "boundary")},
                     ensure_ascii=False, indent=1), sizes)
    parts = {p["source"].split(".")[0] if p["source"] != "" else p["dataCode"]: p
             for p in month["boundary"]}
    assert parts["incomer"]["value"] == "120000.00" and parts["incomer"]["tce"] == "14.7480"
    assert parts["to-neighbour"]["value"] == "15000.00" and parts["to-neighbour"]["tce"] == "1.8435"
    assert parts["workshop"]["role"] == "sub" and parts["workshop"]["tce"] == "9.2175"
    (coal,) = [p for p in month["boundary"] if p["dataCode"] == COAL]
    assert coal["tce"] == "128.9312"
    # 128.9312 + 14.7480 − 1.8435 = 141.8357 tce
    assert month["total_tce"] == "141.8357" and month["total_status"] == "complete"
    items = {i["dataCode"]: i for i in month["items"]}
    assert items["00-00-0000-080000-00"]["value"] == "141.8357"
    # 141 835.7 kgce / 1 200 t = 118.1964 kgce/t
    uc = items["00-00-0000-080001-00"]
    assert uc["value"] == "118.1964" and uc["unit"] == "kgce/t"
    assert month["electricity_convention"] == "equivalent"
