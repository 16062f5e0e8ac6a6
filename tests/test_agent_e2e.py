"""The whole agent against real parts: a pymodbus meter, Mosquitto, the agent as a subprocess.

What is checked is what the platform would see: every envelope verifies (signature, key id,
prev chain, seq without gaps, tests/verifier.py written from docs/protocol.md), and every
sample the agent committed to its store arrives exactly once with the value that was stored.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from agent.protocol.envelope import format_value
from buffer.store import Store
from hil.broker import Mosquitto, Subscriber
from tests.agent_harness import (
    ENTERPRISE,
    GATEWAY,
    AgentProcess,
    CountingMeter,
    envelopes,
    public_key_of,
    wait_until,
    write_site,
)
from tests.verifier import ChainVerifier

DECIMALS = {"import_active_energy": 2, "active_power": 3, "voltage_a": 1}


def committed(data_dir: Path) -> tuple[list[tuple[str, str, int, str, int]], int, int]:
    """Every sample in the agent's store, and its (sealed cursor, next seq). Agent must be stopped."""
    store = Store(data_dir / "agent.db")
    try:
        rows = store.readings.readings_after(0, 10_000_000)
        samples = [(r.meter, r.point, r.ts, format_value(r.value, DECIMALS[r.point]), int(r.quality))
                   for _, r in rows]
        return samples, store.state.cursor("sealed_rowid"), store.outbox.chain_head()[0]
    finally:
        store.close()


def received_samples(msgs: list[tuple[str, bytes]]) -> list[tuple[str, str, int, str, int]]:
    seen: set[str] = set()
    out = []
    for env in envelopes(msgs, "readings"):
        if env["id"] in seen:
            continue
        seen.add(env["id"])
        out.extend(tuple(s) for s in env["body"]["samples"])
    return out  # type: ignore[return-value]


def verify_all(key: Path, msgs: list[tuple[str, bytes]]) -> ChainVerifier:
    kid, raw = public_key_of(key)
    v = ChainVerifier({kid: raw}, ENTERPRISE, GATEWAY)
    for _, payload in msgs:
        v.accept(payload)
    return v


def ids_in_order(msgs: list[tuple[str, bytes]]) -> list[int]:
    return [e["seq"] for e in envelopes(msgs)]


@pytest.fixture
def site(tmp_path: Path) -> Any:
    with Mosquitto(persistence=True) as broker, CountingMeter() as meter:
        sub = Subscriber(broker.port, f"energy/{ENTERPRISE}/{GATEWAY}/up/#").start()
        try:
            yield tmp_path, broker, meter, sub
        finally:
            sub.stop()


def test_broker_outage_loses_nothing(site: Any) -> None:
    tmp, broker, meter, sub = site
    cfg = write_site(tmp, broker.port, meter.port)
    agent = AgentProcess(cfg).start()
    try:
        assert wait_until(lambda: len(envelopes(sub.snapshot(), "readings")) >= 3, 30), agent.log_text()
        outage_start = int(time.time() * 1000)
        broker.stop()
        time.sleep(30)  # polling goes on; envelopes pile up in the outbox
        outage_end = int(time.time() * 1000)
        assert agent.alive(), agent.log_text()
        broker.start()
        # The backlog drains: an envelope sealed after the restart arrives.
        assert wait_until(lambda: any(e["body"]["samples"][0][2] > outage_end + 2000
                                      for e in envelopes(sub.snapshot(), "readings")), 60), agent.log_text()
    finally:
        assert agent.terminate() == 0, agent.log_text()
    # After a clean stop everything sealed has been delivered; let the last messages arrive.
    samples, _sealed, next_seq = committed(tmp / "data")
    assert wait_until(lambda: max(ids_in_order(sub.snapshot()), default=0) >= next_seq - 1, 20)
    msgs = sub.snapshot()
    v = verify_all(tmp / "signing.key", msgs)
    assert v.gaps() == []
    seqs = ids_in_order(msgs)
    assert len(seqs) == len(set(seqs)), "an envelope arrived twice"
    assert seqs == sorted(seqs), "envelopes arrived out of seq order"
    got = received_samples(msgs)
    assert got == samples, "the samples received are not exactly the samples committed"
    during = [s for s in samples if outage_start <= s[2] <= outage_end and s[4] == 0]
    assert len(during) >= 25 * 3, "polling did not continue during the outage"
    # Values are what the meter held: the counter only grows, power and voltage are constant.
    energy = [float(s[3]) for s in samples if s[1] == "import_active_energy" and s[4] == 0]
    assert energy == sorted(energy) and energy[0] >= 1000.0
    assert {s[3] for s in samples if s[1] == "voltage_a" and s[4] == 0} == {"230.1"}
    assert {s[3] for s in samples if s[1] == "active_power" and s[4] == 0} == {"12.500"}


def test_kill_9_loses_no_committed_reading(site: Any) -> None:
    tmp, broker, meter, sub = site
    cfg = write_site(tmp, broker.port, meter.port, poll=0.5, seal=0.5)
    rng = random.Random(7)
    counts = []
    for _ in range(4):
        agent = AgentProcess(cfg).start()
        time.sleep(rng.uniform(2.0, 4.0))
        agent.kill()
        samples, _, next_seq = committed(tmp / "data")
        counts.append((len(samples), next_seq))
    # Committed rows only ever grow across kills; seq never goes back.
    assert [c[0] for c in counts] == sorted(c[0] for c in counts) and counts[-1][0] > counts[0][0]
    assert [c[1] for c in counts] == sorted(c[1] for c in counts)
    before_final = committed(tmp / "data")[0]
    agent = AgentProcess(cfg).start()
    time.sleep(3)
    assert agent.terminate() == 0, agent.log_text()
    samples, _sealed, next_seq = committed(tmp / "data")
    assert samples[: len(before_final)] == before_final, "a committed reading changed or vanished"
    assert wait_until(lambda: max(ids_in_order(sub.snapshot()), default=0) >= next_seq - 1, 20)
    msgs = sub.snapshot()
    v = verify_all(tmp / "signing.key", msgs)  # the chain is unbroken across the kills
    assert v.gaps() == []
    assert sorted(set(ids_in_order(msgs))) == list(range(1, next_seq))
    assert received_samples(msgs) == samples
    assert "Traceback" not in agent.log_text()
