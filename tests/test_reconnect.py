"""After a broker outage of any length, the first delivery follows within seconds.

Real parts: Mosquitto, a pymodbus meter, the agent as a process with its default reconnect
settings (reconnect_min 1 s, reconnect_max 10 s). Simulated: the length of the outage. What
an hour-long outage leaves behind for the reconnect is (1) a back-off at its cap and (2) an
hour of backlog; the agent is started with the broker down and kept so for 30 s — with the
defaults the back-off reaches its cap after ~15 s, so from then on a 30 s and a 1 h outage
look alike to it — and its store is seeded beforehand with the samples the outage's length
would have piled up (one a second per point). The broker then returns: the first envelope
must reach a subscriber within 10 s, and every sample committed must arrive exactly once.
CI runs the 30 s case; the 5 min and 1 h cases are marked slow (each ~1 min of real time).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from buffer.store import Store
from drivers.base import Quality, Reading
from hil.broker import Mosquitto, Subscriber
from tests.agent_harness import (
    ENTERPRISE,
    GATEWAY,
    AgentProcess,
    CountingMeter,
    envelopes,
    wait_until,
    write_site,
)
from tests.test_agent_e2e import committed, ids_in_order, received_samples, verify_all

DOWN_S = 30  # real time the broker stays down: long enough for the back-off to reach its cap
FIRST_DELIVERY_MAX_S = 10.0


def seed_backlog(data_dir: Path, seconds: int) -> int:
    """The samples an outage of `seconds` would have left unsent, as the agent stores them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir / "agent.db")
    now = int(time.time() * 1000) - 1000
    start = now - seconds * 1000
    try:
        batch: list[Reading] = []
        for k, ts in enumerate(range(start, now, 1000)):
            batch += [Reading("main", "import_active_energy", ts, 900.0 + k * 0.07, Quality.GOOD),
                      Reading("main", "active_power", ts, 12.5, Quality.GOOD),
                      Reading("main", "voltage_a", ts, 230.1, Quality.GOOD)]
            if len(batch) >= 3000:
                store.readings.add_readings(batch)
                batch = []
        if batch:
            store.readings.add_readings(batch)
    finally:
        store.close()
    return 3 * seconds


@pytest.mark.parametrize("outage_s", [
    30,
    pytest.param(300, marks=pytest.mark.slow),
    pytest.param(3600, marks=pytest.mark.slow),
])
def test_first_delivery_within_seconds_of_the_broker_returning(tmp_path: Path, outage_s: int) -> None:
    with Mosquitto(persistence=True) as broker, CountingMeter() as meter:
        sub = Subscriber(broker.port, f"energy/{ENTERPRISE}/{GATEWAY}/up/#").start()
        try:
            assert wait_until(lambda: sub.subacks >= 1, 10)
            broker.stop()  # the outage starts before the agent does: its first connect fails
            cfg = write_site(tmp_path, broker.port, meter.port)
            # The daemon's defaults, not the test harness's quick reconnect.
            cfg.write_text(cfg.read_text().replace("reconnect_min = 0.2\nreconnect_max = 1.0\n", ""))
            seeded = seed_backlog(tmp_path / "data", outage_s if outage_s > DOWN_S else 0)
            agent = AgentProcess(cfg).start()
            try:
                time.sleep(DOWN_S)
                assert agent.alive(), agent.log_text()
                assert "mqtt cannot connect" in agent.log_text()
                broker.start()
                back = time.monotonic()
                first = _first_arrival(sub, timeout=30)
                assert first is not None, agent.log_text()
                waited = first - back
                print(f"outage {outage_s} s: first envelope {waited:.2f} s after the broker returned")
                assert waited <= FIRST_DELIVERY_MAX_S, agent.log_text()
                # The whole backlog follows.
                assert wait_until(lambda: _sealed_after(sub, back), 60 + outage_s / 30), agent.log_text()
            finally:
                assert agent.terminate() == 0, agent.log_text()
            samples, _sealed, next_seq = committed(tmp_path / "data")
            assert wait_until(lambda: max(ids_in_order(sub.snapshot()), default=0) >= next_seq - 1, 30)
            msgs = sub.snapshot()
        finally:
            sub.stop()
    assert verify_all(tmp_path / "signing.key", msgs).gaps() == []
    seqs = ids_in_order(msgs)
    assert len(seqs) == len(set(seqs)), "an envelope arrived twice"
    assert received_samples(msgs) == samples, "lost or altered samples"
    assert len(samples) >= seeded + 3 * DOWN_S * 0.8


def _first_arrival(sub: Subscriber, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.snapshot():
            return time.monotonic()
        time.sleep(0.05)
    return None


def _sealed_after(sub: Subscriber, back_monotonic: float) -> Any:
    """A readings envelope with a sample taken after the broker returned has arrived."""
    back_ms = (time.time() - (time.monotonic() - back_monotonic)) * 1000
    return any(e["body"]["samples"][-1][2] > back_ms + 2000 for e in envelopes(sub.snapshot(), "readings"))
