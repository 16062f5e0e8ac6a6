"""The day closes from the meter's daily-freeze register where the profile declares one."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from agent.accounting.reports import Reporter
from agent.config import ConfigError, load_config
from buffer.store import Store
from drivers.base import Quality, Reading
from tests.test_reports import CONFIG, ms

FREEZE_POINT = """
[[meter.point]]
name = "kwh_frozen"
register = 10
type = "u32"
scale = 0.01
unit = "kWh"
kind = "counter"
freeze_of = "kwh"
"""


def _day(tmp_path: Path, frozen_value: float) -> dict:
    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path) + FREEZE_POINT)
    cfg = load_config(tmp_path / "agent.toml")
    store = Store(tmp_path / "agent.db")
    try:
        rows = []
        # Reads every 20 minutes: 1 000.00 at 23:50 on the 20th, 3.00 kWh a minute until 06:00,
        # then 0.50 a minute. The line through 23:50 and 00:10 puts midnight at the mean; the
        # meter's freeze register knows the exact value.
        for when, v in [("2026-11-20T23:50", 1000.0), ("2026-11-21T00:10", 1060.0),
                        ("2026-11-21T23:50", 2000.0), ("2026-11-22T00:10", 2002.0)]:
            rows.append(Reading("main", "kwh", ms(when), v, Quality.GOOD))
        # The freeze register read after midnight: first at 00:01 (a lagging meter clock may
        # still show yesterday's freeze — ignored), then from 00:06 on: today's.
        rows.append(Reading("main", "kwh_frozen", ms("2026-11-22T00:01"), 1030.0, Quality.GOOD))
        rows.append(Reading("main", "kwh_frozen", ms("2026-11-22T00:06"), frozen_value, Quality.GOOD))
        rows.append(Reading("main", "kwh_frozen", ms("2026-11-21T00:06"), 1030.0, Quality.GOOD))
        store.readings.add_readings(rows)
        body = Reporter(cfg, store, None).day_body(date(2026, 11, 21), ms("2026-11-22T02:00"))
    finally:
        store.close()
    (item,) = [i for i in body["items"] if i["kind"] == "counter"]
    return item


def test_day_closes_from_the_freeze_register(tmp_path: Path):
    item = _day(tmp_path, 2001.40)
    # Opening: interpolated (no freeze read on the 21st is checked for the opening) 1 030.00;
    # closing from the register 2 001.40 instead of the line's 2 001.00: 971.40 kWh.
    assert item["endValue"] == "2001.40" and item["closedBy"] == "freeze"
    assert item["value"] == "971.40" and "freeze" in item["flags"]


def test_implausible_freeze_falls_back_to_interpolation(tmp_path: Path):
    # A freeze above the first read after midnight cannot be the counter at 00:00.
    item = _day(tmp_path, 2100.00)
    assert item["endValue"] == "2001.00" and item["closedBy"] == "interpolation"
    assert item["value"] == "971.00" and "freeze" not in item["flags"]


def test_freeze_of_must_name_a_counter_of_the_meter(tmp_path: Path):
    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path)
                                         + FREEZE_POINT.replace('"kwh"\n', '"kvarh"\n'))
    try:
        load_config(tmp_path / "agent.toml")
    except ConfigError as e:
        assert "freeze_of" in str(e.lines)
    else:
        raise AssertionError("accepted a freeze of an unknown point")
