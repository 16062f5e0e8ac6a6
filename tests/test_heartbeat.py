"""The gateway's own health on the wire: `status` envelopes on a schedule, a signed last will."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


def test_status_envelopes_and_last_will(tmp_path: Path) -> None:
    with Mosquitto() as broker, CountingMeter() as meter:
        sub = Subscriber(broker.port, f"energy/{ENTERPRISE}/{GATEWAY}/#").start()
        cfg = write_site(tmp_path, broker.port, meter.port, heartbeat=1.5, keepalive=5)
        agent = AgentProcess(cfg).start()
        try:
            assert wait_until(lambda: len(envelopes([m for m in sub.snapshot() if "/up/" in m[0]],
                                                    "status")) >= 2, 30), agent.log_text()
            agent.kill()  # no DISCONNECT: the broker publishes the will after 1.5 × keepalive
            assert wait_until(lambda: any(t.endswith("/will") for t, _ in sub.snapshot()), 20)
        finally:
            sub.stop()
    kid, raw = public_key_of(tmp_path / "signing.key")
    up = [m for m in sub.snapshot() if "/up/" in m[0]]
    verifier = ChainVerifier({kid: raw}, ENTERPRISE, GATEWAY)
    for _, payload in up:
        verifier.accept(payload)
    status = envelopes(up, "status")[-1]["body"]
    assert status["meters"][0]["meter"] == "main" and status["meters"][0]["state"] == "online"
    assert {"version", "uptime_s", "backlog", "disk", "clock", "counters", "uplink"} <= set(status)
    assert status["clock"]["state"] == "ok"
    assert status["disk"]["store_bytes"] > 0 and status["disk"]["budget_bytes"] > 0
    assert status["uplink"]["mqtt"]["connected"] == "yes"
    assert status["uplink"]["mqtt"]["endpoint"] == f"127.0.0.1:{broker.port}"
    assert set(status["backlog"]) == {"mqtt"} and status["last_delivered"]["mqtt"]["seq"] > 0
    will = next(json.loads(p) for t, p in sub.snapshot() if t.endswith("/will"))
    assert will["type"] == "offline" and will["gateway"] == GATEWAY and will["kid"] == kid
    sig = base64.b64decode(will.pop("sig"))
    Ed25519PublicKey.from_public_bytes(raw).verify(sig, rfc8785.dumps(will))
