"""MQTT fail-over across a broker cluster's addresses: two real Mosquittos, the real uplink,
store and forwarder. Stopping the broker in use moves delivery to the other within seconds,
and every envelope reaches one of them."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from agent.config.schema import MqttDestination
from hil.broker import Mosquitto, Subscriber
from tests.test_forwarder import UP, rig

MOVE_WITHIN_S = 5.0


def _ids(sub: Subscriber) -> list[str]:
    return [json.loads(p)["id"] for _, p in sub.snapshot()]


def test_stopping_the_first_broker_moves_delivery_to_the_second(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="energy_agent")

    async def main() -> None:
        dest = MqttDestination(name="cluster", brokers=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                               reconnect_min=0.2, reconnect_max=1.0, keepalive=5)
        async with rig(tmp_path, dest) as r:
            assert await r.uplink.wait_connected(5)
            assert r.uplink.endpoint == f"127.0.0.1:{a.port}"
            first = await r.enqueue(50)
            await r.wait_backlog_zero(10)
            assert set(first) <= set(_ids(sa)), "the first broker took the first batch"
            # The broker in use goes away; envelopes keep being sealed meanwhile.
            await asyncio.to_thread(a.stop)
            t0 = time.monotonic()
            during = await r.enqueue(50)
            await r.wait_backlog_zero(MOVE_WITHIN_S + 5)
            moved = time.monotonic() - t0
            assert r.uplink.endpoint == f"127.0.0.1:{b.port}"
            assert moved < MOVE_WITHIN_S, f"delivery took {moved:.1f} s to move to the second broker"
            after = await r.enqueue(50)
            await r.wait_backlog_zero(10)
            await asyncio.sleep(0.3)
            got = set(_ids(sa)) | set(_ids(sb))
            assert set(first + during + after) <= got, "nothing lost across the move"
            assert set(during + after) <= set(_ids(sb))
            s = r.forwarder.stats()
            assert s.endpoint == f"127.0.0.1:{b.port}" and s.destination == "mqtt"
            print(f"moved to the second broker and drained 50 envelopes in {moved:.2f} s")

    with Mosquitto() as a, Mosquitto() as b:
        sa = Subscriber(a.port, f"{UP}/#").start()
        sb = Subscriber(b.port, f"{UP}/#").start()
        try:
            asyncio.run(main())
        finally:
            sb.stop()
            a.start()  # so the subscriber's stop has a broker to say goodbye to
            sa.stop()
    text = caplog.text
    assert f"broker 127.0.0.1:{a.port} failed, moving to 127.0.0.1:{b.port}" in text
    assert f"connected to 127.0.0.1:{b.port}" in text
