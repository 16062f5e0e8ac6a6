"""Manual entry, meter replacement and export through the real CLI entry point."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.accounting.manual import ManualError, manual_body
from agent.cli import main
from agent.protocol.signing import generate_key
from buffer.store import Store
from tests.test_reports import CONFIG, _every_minute, ms

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(dir=tmp_path))
    generate_key(tmp_path / "key.pem")
    return cfg


def test_manual_body_is_validated():
    now = ms("2026-12-02T09:00")
    body, period = manual_body("00-00-0000-010104-10", "1140.10", "t", tz=TZ, entered_ms=now,
                               month="2026-11", variety="raw_coal")
    (it,) = body["items"]
    assert period == "2026-11" and it["statType"] == 2 and it["inputType"] == 5
    assert it["value"] == "1140.10" and it["periodStart"] == "2026-11-01T00:00:00+08:00"
    _, p = manual_body("00-00-0000-040001-00", "12", "t", tz=TZ, entered_ms=now, day="2026-11-21")
    assert p == "2026-11-21"
    for bad in [dict(code="00-00-0000-0101-10"), dict(value="1,140.10"), dict(value="1e3"),
                dict(month="2026-13"), dict(month="2027-01"), dict(unit=" ")]:
        args = {"code": "00-00-0000-010104-10", "value": "1", "unit": "t", "month": "2026-11"}
        args.update(bad)
        with pytest.raises(ManualError):
            manual_body(args.pop("code"), args.pop("value"), args.pop("unit"), tz=TZ,
                        entered_ms=now, **args)


def test_enter_seals_and_a_correction_supersedes(site: Path, capsys):
    c = str(site)
    assert main(["enter", "-c", c, "00-00-0000-010104-10", "1140.10", "--unit", "t",
                 "--period", "2026-11", "--variety", "raw_coal", "--note", "delivery notes"]) == 0
    first_id = capsys.readouterr().out.split()[1].rstrip(":")
    assert main(["enter", "-c", c, "00-00-0000-010104-10", "1141.10", "--unit", "t",
                 "--period", "2026-11", "--supersedes", first_id]) == 0
    assert main(["enter", "-c", c, "00-00-0000-010104-10", "1", "--unit", "t",
                 "--period", "2026-11", "--supersedes", "nope-1"]) == 2
    assert "no manual entry" in capsys.readouterr().err
    store = Store(site.parent / "agent.db")
    try:
        rows = store.outbox.envelopes("manual", "2026-11", "2026-11")
    finally:
        store.close()
    assert rows[0].id == first_id and len(rows) == 2  # nothing deleted
    second = json.loads(rows[1].payload)["body"]["items"][0]
    assert second["supersedes"] == first_id and second["value"] == "1141.10"


def test_replace_meter_records_an_event_the_reports_use(site: Path, capsys):
    c = str(site)
    assert main(["replace-meter", "-c", c, "main", "kwh", "--old-final", "90365.00",
                 "--new-initial", "0", "--at", "2026-11-21T12:00"]) == 0
    assert main(["replace-meter", "-c", c, "main", "nope", "--old-final", "1",
                 "--new-initial", "0", "--at", "2026-11-21T12:00"]) == 2
    store = Store(site.parent / "agent.db")
    try:
        ((_, _, ts, data),) = store.state.events("replacement")
    finally:
        store.close()
    assert ts == ms("2026-11-21T12:00") and data["old_final"] == "90365.00"


def test_export_marks_unsealed_periods_and_reads_sealed_ones(site: Path, tmp_path: Path):
    store = Store(tmp_path / "agent.db")
    try:
        _every_minute(store, "2026-11-20T23:50", "2026-11-22T00:10", 100.0, 0.5)
    finally:
        store.close()
    out = tmp_path / "day.csv"
    assert main(["export", "-c", str(site), "--day", "2026-11-21", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    daily = [r for r in rows if r["type"] == "daily" and r["dataCode"] == "00-00-0000-020201-10"]
    assert len(daily) == 1 and daily[0]["status"] == "not yet sealed"
    # The total is an ordinary item of the daily report, under its own code.
    (total,) = [r for r in rows if r["type"] == "daily" and r["dataCode"] == "00-00-0000-080000-00"]
    assert total["value"] == "0.0885" and total["unit"] == "tce"
    assert daily[0]["value"] == "720.00" and daily[0]["completeness"] == "1.0000"
    assert len([r for r in rows if r["type"] == "interval"]) == 96
    assert [r["value"] for r in rows if r["type"] == "total_tce"] == ["0.0885"]  # 720 × 0.1229


def test_export_never_creates_a_store(site: Path, tmp_path: Path, capsys):
    assert not (tmp_path / "agent.db").exists()
    assert main(["export", "-c", str(site), "--day", "2026-11-21"]) == 1
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "agent.db").exists()


def test_export_today_so_far(site: Path, tmp_path: Path):
    import time
    from datetime import datetime

    from drivers.base import Quality, Reading

    now = time.time()
    store = Store(tmp_path / "agent.db")
    try:
        # Read every minute for the last 40 minutes (or since midnight, if that is sooner).
        start = max(now - 40 * 60, datetime.fromtimestamp(now, TZ).replace(
            hour=0, minute=0, second=0, microsecond=0).timestamp())
        rows, t = [], start
        while t < now:
            rows.append(Reading("main", "kwh", int(t * 1000), 100.0 + (t - start) / 60, Quality.GOOD))
            t += 60
        store.readings.add_readings(rows)
    finally:
        store.close()
    today = datetime.fromtimestamp(now, TZ).date().isoformat()
    out = tmp_path / "today.csv"
    assert main(["export", "-c", str(site), "--day", today, "-o", str(out)]) == 0
    rows_out = list(csv.DictReader(out.open()))
    daily = [r for r in rows_out if r["type"] == "daily" and r["meter"] == "main"]
    assert len(daily) == 1 and daily[0]["status"] == "not yet sealed"
    intervals = [r for r in rows_out if r["type"] == "interval"]
    # Only the intervals begun by now, the last one still running.
    elapsed = datetime.fromtimestamp(now, TZ)
    assert len(intervals) == (elapsed.hour * 60 + elapsed.minute) // 15 + 1
