"""A second client on the broker that forges platform acks (issue 13: forged acks lost data).

It reads every envelope the gateway publishes and, at once, "acks" that id and the next
`ahead` ids (ids are guessable: `{E}-{G}-{seq}`) as accepted or rejected — unsigned in the
old format, and signed with a key of its own over the exact bytes it saw — plus, every
second, a blind spray of ids 1..`spray` and a deeply nested JSON payload. Against an agent
that verifies acks none of this may change anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from hil.platform_sim import canonical, key_id


class AckForger:
    def __init__(self, port: int, enterprise: str, gateway: str, prefix: str = "energy",
                 ahead: int = 20, spray: int = 200) -> None:
        self.e, self.g, self.ahead, self.spray_n = enterprise, gateway, ahead, spray
        self.up = f"{prefix}/{enterprise}/{gateway}/up/#"
        self.ack_topic = f"{prefix}/{enterprise}/{gateway}/down/ack"
        self.key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"hil forger").digest())
        self.kid = key_id(self.key.public_key().public_bytes_raw())
        self.sent = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hil-ack-forger")
        self.client.on_connect = lambda c, *_: c.subscribe(self.up, qos=0)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.port = port
        self._thread = threading.Thread(target=self._spray, name="forger-spray", daemon=True)

    def start(self) -> AckForger:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._ready.wait(5):
            raise TimeoutError("forger: no subscription")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _forge(self, seq: int, digest: str, result: str) -> None:
        eid = f"{self.e}-{self.g}-{seq}"
        entry = {"id": eid, "result": result, "sha256": digest,
                 "reason": "forged\n2026-12-06 08:00:00 CRITICAL agent: forged line"}
        self.client.publish(self.ack_topic, json.dumps({"v": 1, "acks": [entry]}), qos=1)
        doc: dict[str, Any] = {"v": 1, "enterprise": self.e, "gateway": self.g, "acks": [entry],
                               "alg": "ed25519", "kid": self.kid}
        doc["sig"] = base64.b64encode(self.key.sign(canonical(doc))).decode()
        self.client.publish(self.ack_topic, canonical(doc), qos=1)
        self.sent += 2

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            seq = int(json.loads(msg.payload)["seq"])
        except (ValueError, KeyError, TypeError):
            return
        digest = hashlib.sha256(msg.payload).hexdigest()
        for s in range(seq, seq + self.ahead):  # read-ahead
            self._forge(s, digest, "rejected" if s % 2 else "accepted")

    def _spray(self) -> None:
        while not self._stop.wait(1.0):
            for s in range(1, self.spray_n + 1):  # blind
                self._forge(s, "0" * 64, "accepted")
            self.client.publish(self.ack_topic, b"[" * 100_000, qos=0)
            self.sent += 1
