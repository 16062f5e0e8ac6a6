"""The forwarder with the real Store, the real MQTT uplink and a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import main
from agent.config import PlatformSection
from agent.protocol.signing import generate_key
from agent.runtime.store_thread import StoreThread
from agent.uplink.forwarder import Forwarder
from agent.uplink.mqtt import MqttUplink
from buffer.store import EnvelopeMeta, Store
from hil.broker import Mosquitto, Subscriber
from tests.store_helpers import enqueue
from tests.test_reports import CONFIG

E, G = "91370600780790663W", "gw-01"
UP = f"energy/{E}/{G}/up"


class Rig:
    """Store on its own SQLite thread, uplink, forwarder task: what agent/runtime/app.py wires."""

    def __init__(self, db: StoreThread, store: Store, uplink: MqttUplink,
                 forwarder: Forwarder, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.db, self.store, self.uplink = db, store, uplink
        self.forwarder, self.task, self.stop = forwarder, task, stop
        self.call = db.call

    async def enqueue(self, n: int, kind: str = "readings", tag: str = "", pad: int = 200) -> list[str]:
        def work() -> list[str]:
            ids = []
            for _ in range(n):
                seq, _head = self.store.outbox.chain_head()
                eid = f"{E}-{G}-{seq}{tag}"
                payload = json.dumps({"v": 1, "id": eid, "seq": seq, "pad": "x" * pad}).encode()
                meta = EnvelopeMeta(seq, eid, kind, f"{UP}/{kind}", int(time.time() * 1000))
                enqueue(self.store, payload, meta)
                ids.append(eid)
            return ids

        ids = await self.call(work)
        self.forwarder.wake()
        return ids

    async def wait_backlog_zero(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (await self.call(self.store.outbox.backlog, "mqtt"))[0]:
            assert time.monotonic() < deadline, f"backlog not drained: {self.forwarder.stats()}"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def rig(tmp: Path, cfg: PlatformSection, window: int = 20) -> AsyncIterator[Rig]:
    db = StoreThread()
    store = await db.call(Store, tmp / "agent.db", ("mqtt",))
    uplink = MqttUplink(cfg, E, G)
    await uplink.start()
    fwd = Forwarder(store, db, uplink, "mqtt", window, backoff_min=0.1, backoff_max=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(fwd.run(stop))
    try:
        yield Rig(db, store, uplink, fwd, task, stop)
    finally:
        stop.set()
        fwd.wake()
        await uplink.stop(grace=1.0)
        await asyncio.wait_for(task, 5)
        await db.call(store.close)
        db.shutdown()


def platform(port: int, **kw: Any) -> PlatformSection:
    base: dict[str, Any] = dict(
        host="127.0.0.1", port=port, reconnect_min=0.1, reconnect_max=0.5, keepalive=10
    )
    base.update(kw)
    return PlatformSection(**base)


def test_backlog_from_outage_drains_oldest_first_without_loss(tmp_path: Path) -> None:
    async def main() -> list[str]:
        async with rig(tmp_path, platform(broker.port)) as r:
            assert await r.uplink.wait_connected(5)
            await asyncio.to_thread(broker.stop)
            ids = await r.enqueue(200)  # sealed while the broker is down
            await asyncio.sleep(2.0)
            assert not r.task.done(), "forwarder must keep running through the outage"
            assert (await r.call(r.store.outbox.backlog, "mqtt"))[0] == 200
            subacks = sub.subacks
            await asyncio.to_thread(broker.start)
            await asyncio.to_thread(sub.wait_subscribed, subacks + 1, 10)
            t0 = time.monotonic()
            await r.wait_backlog_zero(20)
            drain = time.monotonic() - t0
            assert drain < 15, drain
            assert r.forwarder.delivered_total == 200
            assert r.forwarder.last_delivered_seq == 200
            assert await r.call(r.store.outbox.pending, "mqtt", 10) == []
            assert not r.task.done()
            return ids

    with Mosquitto(persistence=True) as broker, Subscriber(broker.port, f"{UP}/#") as sub:
        ids = asyncio.run(main())
        got = sub.wait_for(200, 10)
        time.sleep(0.3)
        got = sub.snapshot()
    _assert_delivery(ids, got)


def test_restart_mid_drain_resends_byte_identical(tmp_path: Path) -> None:
    async def main() -> list[str]:
        async with rig(tmp_path, platform(broker.port), window=5) as r:
            assert await r.uplink.wait_connected(5)
            ids = await r.enqueue(300)
            await _until(lambda: r.forwarder.delivered_total > 20, 10)
            broker.pause()  # freeze it mid-drain (no await since the check), then restart
            subacks = sub.subacks
            await asyncio.to_thread(broker.restart, 0.5)
            await asyncio.to_thread(sub.wait_subscribed, subacks + 1, 10)
            await r.wait_backlog_zero(20)
            return ids

    with Mosquitto(persistence=True) as broker, Subscriber(broker.port, f"{UP}/#") as sub:
        ids = asyncio.run(main())
        sub.wait_for(len(ids), 10)
        time.sleep(0.3)
        got = sub.snapshot()
    _assert_delivery(ids, got)


def test_wake_sends_at_once_and_stats(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path, platform(broker.port)) as r:
            assert await r.uplink.wait_connected(5)
            await asyncio.sleep(0.2)  # forwarder is idle now, sleeping up to idle_check (5 s)
            t0 = time.monotonic()
            await r.enqueue(1)
            await r.wait_backlog_zero(2)
            assert time.monotonic() - t0 < 1.0
            s = r.forwarder.stats()
            assert s.delivered_total == 1 and s.last_delivered_seq == 1
            assert s.last_delivered_ms is not None and s.connected is True

    with Mosquitto() as broker:
        asyncio.run(main())


class Platform:
    """Acks what it gets; ids ending in 'bad' are rejected; drops the first `lose` messages."""

    def __init__(self, port: int, lose: int = 0) -> None:
        self.seen: list[str] = []
        self.lose = lose
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform-sim")
        self.c.on_connect = lambda c, *_: c.subscribe(f"{UP}/#", qos=1)
        self.c.on_subscribe = lambda *_: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(5)

    def _on_message(self, c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        eid = json.loads(msg.payload)["id"]
        self.seen.append(eid)
        if self.lose > 0:
            self.lose -= 1
            return
        ack: dict[str, str] = {"id": eid, "result": "accepted"}
        if eid.endswith("bad"):
            ack = {"id": eid, "result": "rejected", "reason": "bad signature"}
        c.publish(f"energy/{E}/{G}/down/ack", json.dumps({"v": 1, "acks": [ack]}), qos=1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_platform_acks_rejects_and_timeouts(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = platform(broker.port, ack="platform", ack_timeout=0.5)
        async with rig(tmp_path, cfg, window=4) as r:
            assert await r.uplink.wait_connected(5)
            good = await r.enqueue(3)
            bad = await r.enqueue(1, tag="bad")
            more = await r.enqueue(6)
            await r.wait_backlog_zero(10)
            assert r.forwarder.rejected_total == 1
            assert r.forwarder.delivered_total == 9
            rejected = await r.call(r.store.outbox.rejected, "mqtt")
            assert [(seq, reason) for seq, reason, _ in rejected] == [(4, "bad signature")]
            # The first two sends got no ack (lost): resent after ack_timeout, then acked.
            counts = Counter(p.seen)
            assert counts[bad[0]] == 1, "a rejected envelope is never resent"
            assert all(counts[i] >= 1 for i in good + more)
            assert counts[good[0]] == 2 and counts[good[1]] == 2

    with Mosquitto() as broker:
        p = Platform(broker.port, lose=2)
        try:
            asyncio.run(main())
        finally:
            p.close()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_an_envelope_too_large_for_the_broker_is_set_aside_then_resent_once_it_fits(
        tmp_path: Path, version: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Mosquitto disconnects a client whose packet exceeds max_packet_size, so that envelope
    would be retried — and the link dropped — forever, holding up everything behind it. An MQTT 5
    broker announces its limit; for 3.1.1 it is platform.max_packet_bytes."""
    limit = 4096
    known = {} if version == "5" else {"max_packet_bytes": limit}

    async def too_large() -> tuple[list[str], str]:
        async with rig(tmp_path, platform(broker.port, mqtt_version=version, **known)) as r:
            assert await r.uplink.wait_connected(5)
            ids = await r.enqueue(3)
            (big,) = await r.enqueue(1, tag="-big", pad=8000)
            ids += await r.enqueue(3)
            await r.wait_backlog_zero(10)
            assert r.uplink.max_packet_bytes == limit
            assert (r.forwarder.delivered_total, r.forwarder.rejected_total) == (6, 1)
            assert r.forwarder.failures_total == 0, "the link must never have been dropped"
            ((seq, reason, _),) = await r.call(r.store.outbox.rejected, "mqtt")
            assert seq == 4 and f"the broker takes at most {limit}" in reason
            return ids, big

    with Mosquitto(extra_config=f"max_packet_size {limit}\n") as broker, Subscriber(broker.port, f"{UP}/#") as sub:
        ids, big = asyncio.run(too_large())
        sub.wait_for(6, 10)
        time.sleep(0.3)
        assert sorted(json.loads(p)["id"] for _, p in sub.snapshot()) == sorted(ids)

    # The broker's limit raised: `energy-agent resend 4` queues it again, and it goes out as it was.
    site = tmp_path / "agent.toml"
    site.write_text(CONFIG.format(dir=tmp_path))
    generate_key(tmp_path / "key.pem")
    assert main(["resend", "-c", str(site)]) == 0
    assert "seq 4 " in capsys.readouterr().out
    assert main(["resend", "-c", str(site), "--json"]) == 0
    (aside,) = json.loads(capsys.readouterr().out)["set_aside"]
    assert aside["seq"] == 4 and f"the broker takes at most {limit}" in aside["reason"]
    assert main(["resend", "-c", str(site), "4", "5"]) == 1  # 5 was delivered: nothing to do
    assert "seq 4: queued again" in capsys.readouterr().out
    with Mosquitto() as broker, Subscriber(broker.port, f"{UP}/#") as sub:

        async def resend() -> bytes:
            async with rig(tmp_path, platform(broker.port)) as r:
                await r.wait_backlog_zero(10)
                assert r.forwarder.delivered_total == 1
                return next(e.payload for e in await r.call(r.store.outbox.envelopes, "readings") if e.seq == 4)

        stored = asyncio.run(resend())
        ((_, payload),) = sub.wait_for(1, 10)
        assert json.loads(payload)["id"] == big and payload == stored


class Flaky:
    """Wraps the real uplink and raises a surprise (not UplinkDown) the first `n` times."""

    def __init__(self, inner: MqttUplink, n: int) -> None:
        self.inner, self.n = inner, n
        self.name = inner.name
        self.connection_changed = inner.connection_changed

    @property
    def connected(self) -> bool:
        return self.inner.connected

    async def publish(self, topic: str, payload: bytes, envelope_id: str) -> None:
        if self.n > 0:
            self.n -= 1
            raise RuntimeError("surprise from the uplink")
        await self.inner.publish(topic, payload, envelope_id)


def test_survives_unexpected_uplink_exceptions(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path, platform(broker.port)) as r:
            assert await r.uplink.wait_connected(5)
            r.forwarder.uplink = Flaky(r.uplink, 3)  # type: ignore[assignment]
            await r.enqueue(10)
            await r.wait_backlog_zero(10)
            assert r.forwarder.failures_total >= 1
            assert "surprise" in (r.forwarder.last_error or "")
            assert not r.task.done()

    with Mosquitto() as broker:
        asyncio.run(main())


def _assert_delivery(ids: list[str], got: list[tuple[str, bytes]]) -> None:
    by_id: dict[str, set[bytes]] = {}
    order: list[str] = []
    for _topic, payload in got:
        eid = json.loads(payload)["id"]
        if eid not in by_id:
            order.append(eid)
        by_id.setdefault(eid, set()).add(payload)
    assert set(by_id) == set(ids), f"lost: {sorted(set(ids) - set(by_id))[:5]}"
    assert all(len(v) == 1 for v in by_id.values()), "a resend must be byte-identical"
    seqs = [int(i.rsplit("-", 1)[1]) for i in order]
    assert seqs == sorted(seqs), "first deliveries must be oldest first"


async def _until(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
