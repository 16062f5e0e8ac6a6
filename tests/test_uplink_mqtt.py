"""MqttUplink against a real Mosquitto: acks, outages, platform acks, mutual TLS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import ConfigError, PlatformSection
from agent.protocol.acks import Ack
from agent.uplink.mqtt import AckTimeout, MqttUplink, PlatformRejected, UplinkDown, publish_packet_size
from hil.broker import Mosquitto, Subscriber, TlsListener
from tests.platform_acks import ACK_KEY, ack_for

E, G = "91370600780790663W", "gw-01"
UP = f"energy/{E}/{G}/up"


def platform(port: int, **kw: object) -> PlatformSection:
    base: dict[str, object] = dict(
        host="127.0.0.1", port=port, reconnect_min=0.1, reconnect_max=0.5, keepalive=10
    )
    if kw.get("ack") == "platform":
        base["ack_keys"] = [ACK_KEY]
    if kw.get("ack") == "platform":
        base["ack_keys"] = [ACK_KEY]
    base.update(kw)
    return PlatformSection(**base)  # type: ignore[arg-type]


async def connected_uplink(cfg: PlatformSection, timeout: float = 5.0) -> MqttUplink:
    up = MqttUplink(cfg, E, G)
    await up.start()
    assert await up.wait_connected(timeout), "uplink did not connect"
    return up


def test_broker_ack_delivers_exact_bytes() -> None:
    payload = b'{"id":"x-1","v":1,"body":"\xe4\xb8\xad"}'

    async def main() -> None:
        up = await connected_uplink(platform(broker.port))
        try:
            await asyncio.wait_for(up.publish(f"{UP}/readings", payload, "x-1"), 5)
        finally:
            await up.stop()
        assert not up.connected

    with Mosquitto() as broker, Subscriber(broker.port, f"{UP}/#") as sub:
        asyncio.run(main())
        assert sub.wait_for(1, 5) == [(f"{UP}/readings", payload)]


def test_offline_publish_raises_and_paho_does_not_resend_later() -> None:
    async def main() -> None:
        up = await connected_uplink(platform(broker.port))
        try:
            broker.stop()
            await asyncio.wait_for(_until(lambda: not up.connected), 5)
            t0 = time.monotonic()
            with pytest.raises(UplinkDown):
                await up.publish(f"{UP}/readings", b"offline", "x-offline")
            assert time.monotonic() - t0 < 0.1  # immediately, not after a timeout
            subacks = sub.subacks
            broker.start()
            assert await up.wait_connected(10)
            await asyncio.to_thread(sub.wait_subscribed, subacks + 1, 10)
            await up.publish(f"{UP}/readings", b"after", "x-after")
        finally:
            await up.stop()

    # persistence: the subscriber's session survives the restart, so it would see a resend.
    with Mosquitto(persistence=True) as broker, Subscriber(broker.port, f"{UP}/#") as sub:
        asyncio.run(main())
        sub.wait_for(1, 5)
        time.sleep(0.5)
        assert sub.snapshot() == [(f"{UP}/readings", b"after")]


def test_inflight_at_disconnect_is_not_resent_by_paho() -> None:
    # A publish sent into a frozen broker, then the broker dies: the caller gets UplinkDown
    # (the forwarder resends from SQLite). paho would resend its copy after reconnecting;
    # the uplink drops that copy so SQLite stays the only queue.
    async def main() -> None:
        up = await connected_uplink(platform(broker.port))
        try:
            broker.pause()
            task = asyncio.create_task(up.publish(f"{UP}/readings", b"inflight", "x-1"))
            await asyncio.sleep(0.3)
            assert not task.done()
            subacks = sub.subacks
            broker.stop(kill=True)
            with pytest.raises(UplinkDown):
                await asyncio.wait_for(task, 5)
            broker.start()
            assert await up.wait_connected(10)
            await asyncio.to_thread(sub.wait_subscribed, subacks + 1, 10)
            await asyncio.sleep(1.0)
        finally:
            await up.stop()

    with Mosquitto(persistence=True) as broker, Subscriber(broker.port, f"{UP}/#") as sub:
        asyncio.run(main())
        assert sub.snapshot() == []


def test_reconnects_after_broker_restart() -> None:
    async def main() -> None:
        up = await connected_uplink(platform(broker.port))
        try:
            changed = up.connection_changed
            changed.clear()
            await asyncio.to_thread(broker.restart, 0.3)
            assert await up.wait_connected(10)
            assert changed.is_set()
            await asyncio.wait_for(up.publish(f"{UP}/status", b"back", "x-2"), 5)
        finally:
            await up.stop()

    with Mosquitto() as broker:
        asyncio.run(main())
        with Subscriber(broker.port, f"{UP}/#") as sub:
            # Only to prove the broker is healthy after the test's restart.
            assert sub.snapshot() == []


# -- platform acks -----------------------------------------------------------------------------


class Responder:
    """A tiny platform: acks every envelope it sees. Ids with 'bad' are rejected, ids with
    'silent' never acked, ids with 'dup' answered 'duplicate' in a batch with others."""

    def __init__(self, port: int) -> None:
        self.seen: list[str] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform-sim")
        self.c.on_connect = lambda c, *_: c.subscribe(f"{UP}/#", qos=1)
        self.c.on_subscribe = lambda *_: self.ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(5)

    def _on_message(self, c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        eid = json.loads(msg.payload)["id"]
        self.seen.append(eid)
        if "silent" in eid:
            return
        if "bad" in eid:
            ack = ack_for(msg.payload, eid, "rejected", "signature invalid",
                          others=(Ack("someone-else", "accepted", "0" * 64, ""),))
        else:
            ack = ack_for(msg.payload, eid, "duplicate" if "dup" in eid else "accepted",
                          others=(Ack("someone-else", "accepted", "0" * 64, ""),))
        c.publish(f"energy/{E}/{G}/down/ack", ack, qos=1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def envelope(eid: str) -> bytes:
    return json.dumps({"v": 1, "id": eid}).encode()


def test_platform_ack_modes() -> None:
    async def main() -> None:
        cfg = platform(broker.port, ack="platform", ack_timeout=0.5, mqtt_version="5")
        up = await connected_uplink(cfg)
        try:
            await asyncio.wait_for(up.publish(f"{UP}/daily", envelope("ok-1"), "ok-1"), 5)
            await asyncio.wait_for(up.publish(f"{UP}/daily", envelope("dup-2"), "dup-2"), 5)
            with pytest.raises(PlatformRejected, match="signature invalid"):
                await asyncio.wait_for(up.publish(f"{UP}/daily", envelope("bad-3"), "bad-3"), 5)
            t0 = time.monotonic()
            with pytest.raises(AckTimeout):
                await up.publish(f"{UP}/daily", envelope("silent-4"), "silent-4")
            assert 0.45 < time.monotonic() - t0 < 2.0
            # Concurrent publishes, each settled by its own ack.
            ids = [f"ok-{i}" for i in range(10, 30)]
            await asyncio.wait_for(
                asyncio.gather(*(up.publish(f"{UP}/readings", envelope(i), i) for i in ids)), 5
            )
        finally:
            await up.stop()

    with Mosquitto() as broker:
        responder = Responder(broker.port)
        try:
            asyncio.run(main())
        finally:
            responder.close()
        assert responder.seen[:4] == ["ok-1", "dup-2", "bad-3", "silent-4"]


def test_platform_ack_waiters_fail_on_disconnect() -> None:
    async def main() -> None:
        cfg = platform(broker.port, ack="platform", ack_timeout=30)
        up = await connected_uplink(cfg)
        try:
            task = asyncio.create_task(up.publish(f"{UP}/daily", envelope("silent-1"), "silent-1"))
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            await asyncio.to_thread(broker.stop)
            with pytest.raises(UplinkDown):
                await asyncio.wait_for(task, 5)
            assert time.monotonic() - t0 < 5
        finally:
            await up.stop()

    with Mosquitto() as broker:
        asyncio.run(main())


# -- mutual TLS --------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_cert(d: Path, name: str, cn: str, ext: str | None) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    args = ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2"]
    if ext:
        (d / f"{name}.ext").write_text(ext)
        args += ["-extfile", f"{name}.ext"]
    _openssl(*args, cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj",
             "/CN=energy-agent test CA", cwd=d)
    _key_and_cert(d, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _key_and_cert(d, "client", f"energy-agent-{E}-{G}", None)
    yield d


def test_mutual_tls(pki: Path) -> None:
    tls = TlsListener(str(pki / "ca.crt"), str(pki / "server.crt"), str(pki / "server.key"))

    async def main(port: int) -> None:
        good = platform(port, tls=True, ca_file=str(pki / "ca.crt"),
                        cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key"))
        up = await connected_uplink(good)
        try:
            await asyncio.wait_for(up.publish(f"{UP}/readings", b"over-tls", "t-1"), 5)
        finally:
            await up.stop()
        # Same CA, no client certificate: the broker refuses the handshake.
        bare = platform(port, tls=True, ca_file=str(pki / "ca.crt"))
        up = MqttUplink(bare, E, G)
        await up.start()
        try:
            assert not await up.wait_connected(1.5)
            with pytest.raises(UplinkDown):
                await up.publish(f"{UP}/readings", b"nope", "t-2")
        finally:
            await up.stop()

    with Mosquitto(tls=tls) as broker, Subscriber(broker.port, f"{UP}/#") as sub:
        assert broker.tls_port is not None
        asyncio.run(main(broker.tls_port))
        assert sub.wait_for(1, 5) == [(f"{UP}/readings", b"over-tls")]
        time.sleep(0.2)
        assert len(sub.snapshot()) == 1


async def _until(cond: object, step: float = 0.02) -> None:
    while not cond():  # type: ignore[operator]
        await asyncio.sleep(step)


def test_missing_tls_files_are_a_config_error(tmp_path: Path) -> None:
    cfg = platform(1883, tls=True, ca_file=str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match=r"nope\.crt"):
        MqttUplink(cfg, E, G)
    cfg = platform(1883, username="u", password_file=str(tmp_path / "pw"))
    with pytest.raises(ConfigError, match="pw"):
        MqttUplink(cfg, E, G)
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o644)
    with pytest.raises(ConfigError, match=r"password file is accessible by group or others \(mode 0644\)"):
        MqttUplink(cfg, E, G)
    (tmp_path / "pw").chmod(0o600)
    MqttUplink(cfg, E, G)  # readable by its owner only: fine


def test_a_client_key_others_can_read_is_refused(pki: Path, tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_bytes((pki / "client.key").read_bytes())
    key.chmod(0o644)
    cfg = platform(1883, tls=True, ca_file=str(pki / "ca.crt"),
                   cert_file=str(pki / "client.crt"), key_file=str(key))
    with pytest.raises(ConfigError, match=r"TLS client key is accessible by group or others \(mode 0644\)"):
        MqttUplink(cfg, E, G)
    key.chmod(0o600)
    MqttUplink(cfg, E, G)


def test_publish_packet_size_as_mqtt_counts_it() -> None:
    # Fixed header byte, remaining length (a varint), topic length + topic, packet id, [v5: an
    # empty property list], payload.
    assert publish_packet_size("a/b", b"x" * 10, v5=False) == 1 + 1 + 2 + 3 + 2 + 10
    assert publish_packet_size("a/b", b"x" * 10, v5=True) == 1 + 1 + 2 + 3 + 2 + 1 + 10
    assert publish_packet_size("a/b", b"x" * 120, v5=False) == 1 + 1 + 127  # remaining 127: one byte
    assert publish_packet_size("a/b", b"x" * 121, v5=False) == 1 + 2 + 128  # 128: two bytes
    assert publish_packet_size("能/b", b"", v5=False) == 1 + 1 + 2 + 5 + 2  # the topic in UTF-8
