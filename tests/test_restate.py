"""Restatements: a late manual entry or meter replacement restates the sealed day as a new
signed envelope naming what it supersedes; the month follows; the platform gets both."""

from __future__ import annotations

import csv
import json
import time
from decimal import Decimal
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.accounting.manual import manual_body, record_replacement, replacement_event, seal_manual
from agent.accounting.reports import Reporter
from agent.cli import main
from agent.config import load_config
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from buffer.store import Store
from drivers.base import Quality, Reading
from hil.broker import Mosquitto
from hil.platform_sim import PlatformSim
from tests.test_reports import CONFIG, MIN, TZ, ms

NOW = "2026-12-01T01:10"


@pytest.fixture
def rig(tmp_path: Path):
    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path))
    cfg = load_config(tmp_path / "agent.toml")
    generate_key(cfg.signing.key_file)
    store = Store(tmp_path / "agent.db")
    signer = load_signer(cfg.signing.key_file)
    sealer = Sealer(cfg, store, signer, clock=lambda: ms(NOW) / 1000)
    yield cfg, store, sealer, signer, tmp_path
    store.close()


def _reads(store: Store, start: str, end: str, v0: float, per_min: float, skip=()) -> None:
    t, v, rows = ms(start), v0, []
    while t < ms(end):
        if not any(a <= t < b for a, b in skip):
            rows.append(Reading("main", "kwh", t + 150, round(v, 2), Quality.GOOD))
        t, v = t + MIN, v + per_min
    store.readings.add_readings(rows)


def _newest(store: Store, type_: str, period: str) -> tuple[str, int, dict]:
    r = store.outbox.envelopes(type_, period, period)[-1]
    return r.id, r.seq, json.loads(r.payload)["body"]


def test_late_manual_entry_restates_day_and_month_and_reaches_the_platform(rig):
    cfg, store, sealer, signer, tmp = rig
    _reads(store, "2026-11-29T00:00", "2026-12-01T00:30", 5000.0, 0.5)
    rep = Reporter(cfg, store, sealer)
    rep.seal_due(ms(NOW))
    day_id, day_seq, day = _newest(store, "daily", "2026-11-30")
    month_id, _, month = _newest(store, "monthly", "2026-11")
    assert day["total_tce"] == "0.0885" and "supersedes" not in day

    # The weighbridge slip for the 30th comes in the next morning: 10 t of raw coal.
    body, period = manual_body("00-00-0000-010104-10", "10", "t", tz=TZ, entered_ms=ms(NOW),
                               day="2026-11-30", variety="raw_coal", note="weighbridge 0187")
    entry = seal_manual(store, sealer, body, period)
    new = rep.seal_due(ms(NOW) + MIN)
    assert len(new) == 2  # the day, then its month
    rid, rseq, restated = _newest(store, "daily", "2026-11-30")
    assert restated["supersedes"] == day_id and restated["supersedes_seq"] == day_seq
    assert restated["restated"].startswith("manual entry ") and rseq > entry
    # 720 kWh × 0.1229 = 0.0885 tce; 10 t × 0.7143 = 7.1430 tce: 7.2315 tce.
    assert restated["total_tce"] == "7.2315"
    mid, _, m2 = _newest(store, "monthly", "2026-11")
    assert m2["supersedes"] == month_id and m2["restated"].startswith("follows its days")
    assert Reporter(cfg, store, sealer).seal_due(ms(NOW) + 2 * MIN) == []  # once only

    # Every envelope, in order, through a real broker to the platform simulator: both
    # versions of the day and of the month are accepted (signature and chain verified).
    rows = []
    for t in ("readings", "interval", "daily", "monthly", "manual", "status", "chain"):
        rows += store.outbox.envelopes(t)
    rows.sort(key=lambda r: r.seq)
    with Mosquitto() as broker:
        gateway = (cfg.agent.enterprise, cfg.agent.gateway)
        sim = PlatformSim(broker.port, {gateway: {signer.key_id: signer.public_key_raw}},
                          tmp / "platform.db").start()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agent-under-test")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            for r in rows:
                topic = f"energy/{cfg.agent.enterprise}/{cfg.agent.gateway}/up/{r.type}"
                pub.publish(topic, r.payload, qos=1).wait_for_publish(5)
            deadline = time.time() + 10
            while sim.counters.accepted < len(rows) and time.time() < deadline:
                time.sleep(0.05)
            with sim._lock:
                got = sim.db.execute("SELECT id, type, wire FROM envelope WHERE type IN "
                                     "('daily', 'monthly') ORDER BY seq").fetchall()
            final_days, final_months = sim.final_reports("daily"), sim.final_reports("monthly")
        finally:
            pub.loop_stop()
            pub.disconnect()
            sim.stop()
    assert sim.counters.accepted == len(rows) and sim.counters.rejected == 0
    bodies = {i: json.loads(w)["body"] for i, _, w in got}
    assert bodies[rid]["supersedes"] == day_id and day_id in bodies
    assert bodies[mid]["supersedes"] == month_id and month_id in bodies
    # What the platform keeps as final: the restated day and the month that followed it.
    assert final_days["2026-11-30"]["total_tce"] == "7.2315"
    assert final_months["2026-11"]["supersedes"] == month_id
    assert Decimal(final_months["2026-11"]["total_tce"]) == Decimal(month["total_tce"]) + Decimal("7.1430")


def test_late_replacement_restates_the_day_and_the_next(rig):
    cfg, store, sealer, _, tmp = rig
    # The meter is swapped at 12:00 on the 29th (old 5 360.00, the new one from 100.00): the
    # day and the next are sealed "backwards" before anyone records it.
    _reads(store, "2026-11-29T00:00", "2026-11-29T12:00", 5000.0, 0.5)
    _reads(store, "2026-11-29T12:00", "2026-12-01T00:30", 100.0, 0.5)
    rep = Reporter(cfg, store, sealer)
    rep.seal_due(ms(NOW))
    old_id, _, old = _newest(store, "daily", "2026-11-29")
    (it,) = [i for i in old["items"] if i["kind"] == "counter"]
    assert "backwards" in it["flags"] and it["value"] != "720.00"
    _, _, old30 = _newest(store, "daily", "2026-11-30")
    assert [i["value"] for i in old30["items"] if i["kind"] == "counter"] == ["0"]
    data = replacement_event(cfg, "main", "kwh", "5360.00", "100", ms("2026-11-29T12:00"))
    record_replacement(store, data)
    assert rep.seal_due(ms(NOW) + MIN)
    nid, _, new = _newest(store, "daily", "2026-11-29")
    (it,) = [i for i in new["items"] if i["kind"] == "counter"]
    assert new["supersedes"] == old_id and "replaced" in new["restated"]
    assert it["value"] == "720.00" and "replaced" in it["flags"]
    # The sealed intervals follow: 12:00 on the 29th counts both meters, and the 30th's first
    # quarter hour, sealed as 0 (backwards from the held old value), is 7.50 kWh.
    for label, want in (("2026-11-29T12:00", "7.50"), ("2026-11-30T00:00", "7.50")):
        _, _, iv = _newest(store, "interval", label)
        (i,) = [i for i in iv["items"] if i["kind"] == "counter"]
        assert iv.get("supersedes") and i["value"] == want, (label, i)
    # The 30th opened from the held old value: it follows with 720.00 too.
    _, _, nxt = _newest(store, "daily", "2026-11-30")
    (it30,) = [i for i in nxt["items"] if i["kind"] == "counter"]
    assert it30["value"] == "720.00"

    # export: the final value, and the history of restatements with the reason.
    out = tmp / "day.csv"
    store.close()
    assert main(["export", "-c", str(tmp / "agent.toml"), "--day", "2026-11-29", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    final = [r for r in rows if r["type"] == "daily" and r["meter"] == "main"]
    assert final[0]["status"] == "sealed, restated 1×" and final[0]["value"] == "720.00"
    assert final[0]["supersedes"] == old_id
    history = [r for r in rows if r["status"] == f"superseded by {nid}"]
    assert history and history[0]["envelope"] == old_id and "replaced" in history[0]["reason"]
    # Restating by hand when nothing changed says so and seals nothing.
    assert main(["restate", "-c", str(tmp / "agent.toml"), "--day", "2026-11-29",
                 "--reason", "audit"]) == 0
