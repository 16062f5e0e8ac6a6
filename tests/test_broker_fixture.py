"""The Mosquitto launcher and Subscriber that the other tests and the HIL rig build on."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hil.broker import Mosquitto, Subscriber, free_port, port_open


def publish_once(port: int, topic: str, payload: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fixture-pub")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_free_port_is_free() -> None:
    p = free_port()
    assert 1024 < p < 65536
    assert not port_open("127.0.0.1", p)


def test_start_stop_restart_same_port() -> None:
    broker = Mosquitto()
    try:
        broker.start()
        port = broker.port
        assert broker.running and port_open("127.0.0.1", port)
        broker.stop()
        assert not broker.running and not port_open("127.0.0.1", port)
        broker.restart()
        assert broker.running and broker.port == port and port_open("127.0.0.1", port)
    finally:
        broker.cleanup()
    assert not port_open("127.0.0.1", port)


def test_subscriber_receives_exact_bytes() -> None:
    with Mosquitto() as broker, Subscriber(broker.port, "energy/#") as sub:
        publish_once(broker.port, "energy/E/G/up/readings", b"\x00{\"v\":1}\xff")
        publish_once(broker.port, "other/topic", b"ignored")
        msgs = sub.wait_for(1, timeout=5)
        assert msgs == [("energy/E/G/up/readings", b"\x00{\"v\":1}\xff")]
        with pytest.raises(TimeoutError):
            sub.wait_for(2, timeout=0.3)


def test_subscriber_survives_restart_with_persistence() -> None:
    # persistence=True: the subscriber's session and queued QoS 1 messages outlive a restart,
    # so a publisher that reconnects first cannot race the subscriber's resubscribe.
    with Mosquitto(persistence=True) as broker, Subscriber(broker.port, "t/#") as sub:
        broker.restart(down_for=0.2)
        publish_once(broker.port, "t/1", b"after-restart")
        assert sub.wait_for(1, timeout=10) == [("t/1", b"after-restart")]


def test_port_clash_is_reported() -> None:
    with Mosquitto() as a:
        b = Mosquitto(port=a.port)
        with pytest.raises(RuntimeError, match="already in use"):
            b.start(timeout=5)
        b.cleanup()
