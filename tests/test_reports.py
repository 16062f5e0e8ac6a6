"""Reporter against a real Store (tmp file) and a real Sealer with a generated key."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.accounting.reports import LOOKBACK_MS, Reporter, completeness
from agent.config import load_config
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from buffer.names import SUMMARISED_CURSOR
from buffer.retention import prune
from buffer.store import Store
from drivers.base import Quality, Reading

TZ = ZoneInfo("Asia/Shanghai")
MIN = 60_000
DAY_MS = 86_400_000

CONFIG = """
[agent]
gateway = "gw-01"
enterprise = "91370600780790663W"
data_dir = "{dir}"

[platform]
host = "127.0.0.1"

[signing]
key_file = "{dir}/key.pem"

[schedule]
poll_interval = 60
interval_minutes = 15
daily_seal_at = "00:05"

[[bus]]
name = "tcp1"
kind = "modbus-tcp"
host = "127.0.0.1"

[[meter]]
name = "main"
bus = "tcp1"
unit = 1

[[meter.point]]
name = "kwh"
register = 0
type = "u32"
scale = 0.01
kind = "counter"
variety = "electricity"
unit = "kWh"
code = "00-00-0000-020201-10"
"""


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp() * 1000)


@pytest.fixture
def rig(tmp_path: Path):
    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path))
    cfg = load_config(tmp_path / "agent.toml")
    generate_key(cfg.signing.key_file)
    store = Store(tmp_path / "agent.db")
    # Envelopes' `created` is sealing time; fixed so the test does not depend on today.
    sealed_at = ms("2026-11-22T00:31:00") / 1000
    sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file), clock=lambda: sealed_at)
    yield cfg, store, sealer
    store.close()


def _read(store: Store, when: str, value: float, quality: Quality = Quality.GOOD) -> None:
    v = value if quality == Quality.GOOD else None
    store.readings.add_readings([Reading("main", "kwh", ms(when) + 150, v, quality)])


def _every_minute(store: Store, start: str, end: str, kwh_at_start: float, per_min: float):
    t, v = ms(start), kwh_at_start
    rows = []
    while t < ms(end):
        rows.append(Reading("main", "kwh", t + 150, round(v, 2), Quality.GOOD))
        t += MIN
        v += per_min
    store.readings.add_readings(rows)


def _counters(body: dict) -> list[dict]:
    return [i for i in body["items"] if i["kind"] == "counter"]


def _bodies(store: Store, type_: str) -> dict[str, dict]:
    return {r.period: json.loads(r.payload)["body"] for r in store.outbox.envelopes(type_)}


def test_agent_off_across_midnight_still_closes_yesterday(rig):
    cfg, store, sealer = rig
    # 21 Nov: read every minute from 00:00 to 23:50 at 1 kWh/min, then the agent is stopped;
    # it restarts at 00:30 on 22 Nov. 1 kWh/min means 00:00 lies at 1440 + 1000 = 2440.
    _every_minute(store, "2026-11-21T00:00", "2026-11-21T23:51", 1000.0, 1.0)
    _read(store, "2026-11-22T00:30", 1000.0 + 1470)
    rep = Reporter(cfg, store, sealer)
    seqs = rep.seal_due(ms("2026-11-22T00:31"))
    assert seqs
    daily = _bodies(store, "daily")
    assert list(daily) == ["2026-11-21"]
    (item,) = _counters(daily["2026-11-21"])
    assert item["periodStart"] == "2026-11-21T00:00:00+08:00" and item["statType"] == 1
    assert item["inputType"] == 4 and item["dataCode"] == "00-00-0000-020201-10"
    assert {"gap", "interpolated"} <= set(item["flags"])
    # Read at 00:00:00.150 → 1000.00; closing value interpolated across the 40-minute gap:
    # 2430 + 40 × (10 / 40 min) … = 2440.00 (the counter ran at 1 kWh/min throughout).
    assert item["endValue"] == "2440.00"
    assert Decimal(item["value"]) == Decimal("1440.00")
    assert item["samplesExpected"] == 1440 and item["samples"] == 1431
    assert item["intervals"] == 96 and item["completeness"] == "0.9938"
    body = daily["2026-11-21"]
    # 1 440 kWh × 0.1229 = 176.976 kgce = 0.1770 tce
    assert body["tce"] == {"electricity": "0.1770"} and body["total_tce"] == "0.1770"
    assert body["electricity_convention"] == "equivalent"
    # Intervals: the day's 96, and the first two of the 22nd, each labelled by its start.
    intervals = _bodies(store, "interval")
    assert "2026-11-21T10:15" in intervals and "2026-11-22T00:15" in intervals
    i = intervals["2026-11-21T10:15"]["items"][0]
    assert i["periodStart"] == "2026-11-21T10:15:00+08:00" and i["statType"] == 0
    assert i["value"] == "15.00"
    day_sum = sum(Decimal(intervals[k]["items"][0]["value"]) for k in intervals
                  if k.startswith("2026-11-21"))
    assert day_sum == Decimal(item["value"])
    # Idempotent: nothing more is due a minute later.
    assert rep.seal_due(ms("2026-11-22T00:32")) == []


def test_midnight_between_reads_ten_minutes_apart(rig):
    cfg, store, sealer = rig
    # A meter polled every 10 minutes: the reads either side of midnight are 10 minutes apart.
    cfg.schedule.poll_interval = 600.0
    _read(store, "2026-11-21T23:35", 5000.00)
    _read(store, "2026-11-21T23:45", 5010.00)
    _read(store, "2026-11-21T23:55", 5020.00)
    _read(store, "2026-11-22T00:05", 5030.00)
    rep = Reporter(cfg, store, sealer)
    body = rep.day_body(date(2026, 11, 21), ms("2026-11-22T00:31"))
    (item,) = _counters(body)
    # 23:55:00.150 → 5020.00, 00:05:00.150 → 5030.00: at 00:00 the counter stood at 5025.00
    # (to the cent; the 150 ms offsets cancel).
    assert item["endValue"] == "5025.00"
    assert "interpolated" not in item["flags"]


def test_meter_replaced_mid_day(rig):
    cfg, store, sealer = rig
    _every_minute(store, "2026-11-20T23:50", "2026-11-21T12:00", 90000.0, 0.5)  # old meter
    # Replaced at 12:00: old meter's final 90365.00, new meter starts at 0.00.
    store.state.add_event("replacement", ms("2026-11-21T12:00"), {
        "meter": "main", "point": "kwh", "at_ms": ms("2026-11-21T12:00"),
        "old_final": "90365.00", "new_initial": "0.00"})
    _every_minute(store, "2026-11-21T12:00", "2026-11-22T00:10", 0.0, 0.5)
    rep = Reporter(cfg, store, sealer)
    body = rep.day_body(date(2026, 11, 21), ms("2026-11-22T00:31"))
    (item,) = _counters(body)
    # Old meter: 90005.00 at 00:00 (interpolated), final 90365.00: 360.00 kWh. New meter:
    # 0.00 at 12:00, 360.00 at 00:00 (720 min × 0.5): 360.00 kWh. Together 720.00 kWh.
    assert item["value"] == "720.00"
    assert "replaced" in item["flags"] and "backwards" not in item["flags"]


def test_backwards_without_replacement_is_flagged_not_negative(rig):
    cfg, store, sealer = rig
    _every_minute(store, "2026-11-20T23:50", "2026-11-21T12:00", 90000.0, 0.5)
    _every_minute(store, "2026-11-21T12:00", "2026-11-22T00:10", 80000.0, 0.5)  # unexplained
    rep = Reporter(cfg, store, sealer)
    (item,) = _counters(rep.day_body(date(2026, 11, 21), ms("2026-11-22T00:31")))
    assert "backwards" in item["flags"]
    assert Decimal(item["value"]) == Decimal("359.50")  # the last good step 90359.50 is held


def test_month_sealed_after_its_last_day_equals_sum_of_days(rig):
    cfg, store, sealer = rig
    _every_minute(store, "2026-11-29T00:00", "2026-12-01T00:20", 100.0, 0.25)
    rep = Reporter(cfg, store, sealer)
    rep.seal_due(ms("2026-12-01T00:31"))
    daily, monthly = _bodies(store, "daily"), _bodies(store, "monthly")
    assert sorted(daily) == ["2026-11-29", "2026-11-30"]
    m = monthly["2026-11"]["items"][0]
    assert Decimal(m["value"]) == sum(Decimal(b["items"][0]["value"]) for b in daily.values())
    assert m["days"] == 2 and m["daysExpected"] == 30 and "incomplete" in m["flags"]
    assert m["periodStart"] == "2026-11-01T00:00:00+08:00" and m["statType"] == 2


def test_completeness_for_status(rig):
    cfg, store, _ = rig
    _every_minute(store, "2026-11-21T00:00", "2026-11-21T12:00", 0.0, 1.0)
    got = completeness(store, cfg, date(2026, 11, 21))
    assert got == {("main", "kwh"): 0.5}
    assert completeness(store, cfg, date(2026, 11, 21), now_ms=ms("2026-11-21T12:00")) == {
        ("main", "kwh"): 1.0}


def test_summarised_cursor_follows_the_first_open_day(rig):
    cfg, store, sealer = rig
    _every_minute(store, "2026-11-20T00:00", "2026-11-22T00:04", 0.0, 1.0)
    rep = Reporter(cfg, store, sealer)
    assert store.state.cursor(SUMMARISED_CURSOR, default=-1) == -1  # nothing known: nothing held
    rep.seal_due(ms("2026-11-22T00:04"))  # the 21st may not be sealed before 00:05
    assert store.state.cursor(SUMMARISED_CURSOR) == ms("2026-11-21T00:00") - LOOKBACK_MS
    _every_minute(store, "2026-11-22T00:04", "2026-11-22T00:31", 2884.0, 1.0)
    rep.seal_due(ms("2026-11-22T00:31"))
    assert "2026-11-21" in _bodies(store, "daily")
    assert store.state.cursor(SUMMARISED_CURSOR) == ms("2026-11-22T00:00") - LOOKBACK_MS


@pytest.mark.parametrize("hold", [True, False])
def test_budget_pruning_leaves_the_open_day_whole(rig, hold: bool):
    cfg, store, sealer = rig
    rep = Reporter(cfg, store, sealer)
    pad = store.used_bytes()
    for _ in range(200):  # delivered history to make room with
        sealer.seal("status", {"pad": "x" * 4000})
    pad = store.used_bytes() - pad
    _every_minute(store, "2026-11-20T00:00", "2026-11-22T12:00", 0.0, 1.0)
    rep.seal_due(ms("2026-11-22T12:00"))  # days 20 and 21, intervals up to 11:45
    # Readings sealed (send_raw off) and every envelope delivered: all of it may be pruned.
    store.state.set_cursor("sealed_rowid", store.conn.execute("SELECT max(id) FROM polls").fetchone()[0])
    store.outbox.mark_delivered("mqtt", [r[0] for r in store.conn.execute("SELECT seq FROM outbox")])
    if not hold:  # what retention did before the Reporter said what it still reads
        store.conn.execute("DELETE FROM cursors WHERE name = ?", (SUMMARISED_CURSOR,))
    # More than all the readings (~165 kB a day here) can free; the padding can.
    assert pad > 700_000
    budget = store.used_bytes() - 600_000
    report = prune(store, ms("2026-11-22T12:00"), 31 * DAY_MS, 190 * DAY_MS, budget)
    assert not report.over_budget and report.dropped_envelopes == 0

    _every_minute(store, "2026-11-22T12:00", "2026-11-23T00:31", 1440.0 * 2.5, 1.0)
    rep.seal_due(ms("2026-11-23T00:31"))
    (item,) = _counters(_bodies(store, "daily")["2026-11-22"])
    if hold:
        assert report.needed_readings == 0 and report.budget_envelopes > 0
        assert report.budget_readings == 1440  # the 20th; the 21st is the 22nd's lookback
        assert item["samples"] == 1440 and item["completeness"] == "1.0000"
        assert item["value"] == "1440.00" and "gap" not in item["flags"]
    else:  # the same budget eats the morning of the day still open
        assert item["samples"] < 1440


def test_last_good_found_behind_a_long_outage_and_not_beyond_two_hours(rig):
    cfg, store, sealer = rig
    _every_minute(store, "2026-11-21T22:00", "2026-11-21T22:31", 0.0, 1.0)  # last good 22:30
    t = ms("2026-11-21T22:31")
    store.readings.add_readings([Reading("main", "kwh", t + i * MIN, None, Quality.TIMEOUT) for i in range(100)])
    rep = Reporter(cfg, store, sealer)
    (item,) = rep.items
    # Found through several windows, newest first: gaps after it do not hide it.
    assert rep._last_good(item, ms("2026-11-22T00:10")) == ms("2026-11-21T22:30") + 150
    # Two hours after it, the day waits for nothing more from this meter.
    assert rep._last_good(item, ms("2026-11-22T00:31")) is None
    # The day is not closed at 00:10: the meter has not been read past midnight.
    rep.seal_due(ms("2026-11-22T00:10"))
    assert "2026-11-21" not in _bodies(store, "daily")


def test_first_start_at_14_00_leaves_the_morning_without_values_not_zero(rig, tmp_path, capsys):
    cfg, store, sealer = rig
    # The agent's first poll is at 14:00; it reads every minute until 23:59, 1 kWh/min.
    _every_minute(store, "2026-11-21T14:00", "2026-11-22T00:10", 5000.0, 1.0)
    Reporter(cfg, store, sealer).seal_due(ms("2026-11-22T00:31"))
    intervals = _bodies(store, "interval")
    morning = [k for k in intervals if "2026-11-21T00:00" <= k < "2026-11-21T14:00"]
    assert len(morning) == 56  # 00:00 … 13:45: sealed, so the platform knows they are empty
    for k in morning:
        (item,) = intervals[k]["items"]
        assert item["value"] == "" and item["flags"] == ["no_data"], (k, item)
        assert item["startValue"] == "" and item["endValue"] == ""
    (first,) = intervals["2026-11-21T14:00"]["items"]
    assert first["value"] == "15.00"  # 14:00:00.150 → 14:15: the first interval with reads
    (day,) = _counters(_bodies(store, "daily")["2026-11-21"])
    assert Decimal(day["value"]) == Decimal("600.00")  # 14:00 → 24:00, nothing invented before
    # export writes the same: an empty value, never "0".
    from agent.cli import main

    store.close()
    assert main(["export", "-c", str(tmp_path / "agent.toml"), "--day", "2026-11-21"]) == 0
    rows = [line.split(",") for line in capsys.readouterr().out.splitlines()]
    header = rows[0]
    v, f, start = header.index("value"), header.index("flags"), header.index("periodStart")
    at_8 = next(r for r in rows[1:] if r[start].startswith("2026-11-21T08:00"))
    assert at_8[v] == "" and "no_data" in at_8[f]
