"""SIGTERM in the middle of a busy poll and publish window: exit 0 within the stop timeout,
nothing lost — what was committed but not yet delivered goes out after the restart."""

from __future__ import annotations

import time
from pathlib import Path

from hil.broker import Mosquitto, Subscriber
from tests.agent_harness import (
    ENTERPRISE,
    GATEWAY,
    METER_POINTS,
    AgentProcess,
    CountingMeter,
    envelopes,
    wait_until,
    write_site,
)
from tests.test_agent_e2e import committed, ids_in_order, received_samples, verify_all

TIMEOUT_STOP_SEC = 30  # systemd/energy-agent.service


def test_sigterm_while_draining_a_backlog(tmp_path: Path) -> None:
    meters = [CountingMeter().start() for _ in range(8)]
    try:
        with Mosquitto(persistence=True) as broker:
            sub = Subscriber(broker.port, f"energy/{ENTERPRISE}/{GATEWAY}/up/#").start()
            extra = "".join(
                f'[[bus]]\nname = "b{i}"\nkind = "modbus-tcp"\nhost = "127.0.0.1"\nport = {m.port}\n'
                f"timeout = 0.5\nretries = 0\n" + METER_POINTS.format(name=f"m{i}", bus=f"b{i}", unit=1)
                for i, m in enumerate(meters[1:], start=1)
            )
            cfg = write_site(tmp_path, broker.port, meters[0].port, poll=0.2, seal=0.2, extra=extra)
            agent = AgentProcess(cfg).start()
            assert wait_until(lambda: len(envelopes(sub.snapshot())) >= 2, 30), agent.log_text()
            broker.stop()
            time.sleep(8)  # a backlog of ~40 envelopes builds while 8 buses keep polling
            broker.start()
            # Stop while the backlog is draining and polls are in flight.
            assert wait_until(lambda: len(envelopes(sub.snapshot())) >= 5, 20)
            t0 = time.time()
            rc = agent.terminate(timeout=TIMEOUT_STOP_SEC)
            stop_s = time.time() - t0
            assert rc == 0, agent.log_text()
            assert stop_s < TIMEOUT_STOP_SEC
            # Restart: whatever was left in the outbox goes out; then a clean stop.
            agent = AgentProcess(cfg).start()
            time.sleep(3)
            assert agent.terminate() == 0, agent.log_text()
            samples, _, next_seq = committed(tmp_path / "data")
            assert wait_until(lambda: max(ids_in_order(sub.snapshot()), default=0) >= next_seq - 1, 30)
            msgs = sub.snapshot()
            sub.stop()
    finally:
        for m in meters:
            m.stop()
    v = verify_all(tmp_path / "signing.key", msgs)
    assert v.gaps() == []
    assert received_samples(msgs) == samples
    assert "Traceback" not in agent.log_text()
    print(f"stopped in {stop_s:.2f} s; {len(samples)} samples, {next_seq - 1} envelopes")
