"""The store's disk budget during a long outage, and a corrupt store at start — with the real agent.

The design: when the budget is reached the oldest sealed raw readings go first; an unsent envelope
is the last thing ever dropped, and each drop is logged, counted and reported in the next status
message. A corrupt database is moved aside, a fresh one started, and the event reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hil.broker import Mosquitto, Subscriber
from tests.agent_harness import (
    ENTERPRISE,
    GATEWAY,
    AgentProcess,
    CountingMeter,
    envelopes,
    public_key_of,
    status_json,
    wait_until,
    write_site,
)
from tests.verifier import ChainVerifier


def status(cfg: Path) -> dict[str, Any]:
    s = status_json(cfg)
    assert s is not None
    return s


def test_budget_reached_in_a_long_outage_drops_last_and_reports(tmp_path: Path) -> None:
    # Persistence: in broker-ack mode a PUBACK hands the message to the broker, and a broker
    # stopped without persistence may lose it before the subscriber has it.
    with Mosquitto(persistence=True) as broker, CountingMeter() as meter:
        sub = Subscriber(broker.port, f"energy/{ENTERPRISE}/{GATEWAY}/up/#").start()
        cfg = write_site(tmp_path, broker.port, meter.port, poll=0.2, seal=0.2, heartbeat=2,
                         extra="")
        text = cfg.read_text().replace("[[bus]]", "[storage]\nbudget_mb = 0.25\nretention_interval = 1\n\n[[bus]]", 1)
        cfg.write_text(text)
        agent = AgentProcess(cfg).start()
        try:
            assert wait_until(lambda: len(envelopes(sub.snapshot(), "readings")) >= 3, 30), agent.log_text()
            broker.stop()
            # Polling goes on into a store that must stay under 0.4 MB.
            assert wait_until(lambda: status(cfg)["counters"].get("dropped_envelopes", 0) > 0, 120), \
                agent.log_text()[-3000:]
            assert agent.alive()
            during = status(cfg)
            broker.start()
            # The next status envelope tells the platform how many were dropped.
            def reported() -> bool:
                bodies = [e["body"] for e in envelopes(sub.snapshot(), "status")]
                return any(b["counters"].get("dropped_envelopes", 0) > 0 for b in bodies)
            assert wait_until(reported, 30), agent.log_text()[-3000:]
        finally:
            assert agent.terminate() == 0, agent.log_text()[-3000:]
            sub.stop()
    counters = during["counters"]
    # Raw readings went first; envelopes were dropped only after that, each counted.
    assert counters.get("pruned_readings", 0) > 0
    assert any(w.startswith("dropped envelopes:") for w in during["warnings"])
    log = agent.log_text()
    assert "disk budget exhausted: dropped " in log and "unsent envelope(s)" in log
    assert "Traceback" not in log
    # The platform sees exactly the dropped seqs as gaps in an otherwise intact chain.
    kid, raw = public_key_of(tmp_path / "signing.key")
    v = ChainVerifier({kid: raw}, ENTERPRISE, GATEWAY)
    for _, payload in sub.snapshot():
        v.accept(payload)
    from buffer.store import Store

    store = Store(tmp_path / "data" / "agent.db", readonly=True)
    try:
        dropped = sorted(d["seq"] for _, _, _, d in store.state.events("envelope_dropped"))
        assert store.state.counters()["dropped_envelopes"] == len(dropped) > 0
        assert store.size_bytes() < 1_000_000
    finally:
        store.close()
    assert set(v.gaps()) <= set(dropped), "a seq missing at the platform that was not a reported drop"


def test_a_corrupt_store_is_moved_aside_and_reported(tmp_path: Path) -> None:
    with Mosquitto() as broker, CountingMeter() as meter:
        cfg = write_site(tmp_path, broker.port, meter.port)
        data = tmp_path / "data"
        data.mkdir()
        (data / "agent.db").write_bytes(b"this is not an SQLite database, it was overwritten" * 100)
        agent = AgentProcess(cfg).start()
        try:
            assert wait_until(lambda: (status_json(cfg) or {}).get("next_seq", 0) > 1, 30), agent.log_text()
            s = status(cfg)
            assert agent.alive()
        finally:
            assert agent.terminate() == 0, agent.log_text()
    moved = list(data.glob("agent.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not an SQLite")
    assert any(w.startswith("corrupt db moved: 1") for w in s["warnings"]), s["warnings"]
    assert "fresh store started after corruption" in agent.log_text()
