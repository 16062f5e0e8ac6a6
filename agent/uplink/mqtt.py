"""The MQTT uplink: publish one envelope at QoS 1 and return only when it is acknowledged.

paho runs its network thread (loop_start); every callback hops onto the asyncio loop with
call_soon_threadsafe, so all our state (connected flag, waiters) is touched on the loop only.

SQLite is the only durable queue. paho keeps its own in-memory queue — it accepts publishes
while offline (rc 4) and resends in-flight messages after a reconnect — which would add a
second, volatile queue and duplicates next to our byte-identical resends. So: publish only
while connected, and empty paho's outgoing store at every (re)connect, before paho resends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import defaultdict
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import ConfigError, PlatformSection
from agent.config.destinations import broker_list
from agent.config.secret_files import SecretFileError, read_secret
from agent.protocol.acks import MAX_ACK_BYTES, AckKeyError, AckRefused, load_ack_keys, parse_acks, printable
from agent.protocol.envelope import ack_topic
from agent.runtime.backoff import Backoff
from agent.runtime.conditions import Conditions
from agent.uplink.forwarder import AckTimeout, PlatformRejected, TooLarge, UplinkDown
from buffer.names import MQTT

__all__ = ["AckTimeout", "MqttUplink", "PlatformRejected", "TooLarge", "UplinkDown"]

log = logging.getLogger("energy_agent.uplink.mqtt")
IGNORED_LOG_EVERY = 60.0  # seconds: ignored acks are counted always, logged at most this often


class MqttUplink:
    """One MQTT connection to the platform; `publish` returns when the envelope is acked.

    A destination may list several brokers (a cluster behind several addresses): after a
    failed connect or a lost connection the next reconnect goes to the next broker, in turn.
    The session semantics do not change with the broker: every connection starts a clean
    session, and whatever was not acknowledged is resent from SQLite, byte-identical.
    """

    def __init__(
        self,
        cfg: PlatformSection,
        enterprise: str,
        gateway: str,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.cfg = cfg
        self.name: str = getattr(cfg, "name", MQTT)
        # How log lines name it: plain "mqtt" for the one destination of old.
        self._label = "mqtt" if self.name == MQTT else f"mqtt {self.name}"
        self.brokers = broker_list(cfg)
        self._broker = 0  # index into brokers of the one we are on (or trying)
        self._move_on = False  # set on a failure: the next reconnect tries the next broker
        self.client_id = cfg.client_id or f"energy-agent-{enterprise}-{gateway}"
        self.ack_topic = ack_topic(cfg.topic_prefix, enterprise, gateway)
        self.platform_acks = cfg.ack == "platform"
        self.enterprise, self.gateway = enterprise, gateway
        self.ack_keys = self._ack_keys() if self.platform_acks else {}
        self.acks_ignored = 0  # ack messages or entries that changed nothing (forged, stray, late)
        self._ignored_logged_at = -IGNORED_LOG_EVERY
        self._ignored_since_log = 0
        self._digests: dict[str, str] = {}  # envelope id in flight -> SHA-256 of its bytes
        self.connection_changed = asyncio.Event()  # set on every connect/disconnect
        self._up = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_mid: dict[int, asyncio.Future[None]] = {}
        self._by_id: defaultdict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._connect_failures = 0
        # paho's own reconnect delay doubles without jitter; ours replaces it before every wait
        # (set from paho's thread, in the callbacks that precede the wait).
        self._reconnect = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self._conditions = Conditions(log)
        self._broker_max: int | None = None  # MQTT 5 CONNACK's Maximum Packet Size
        self._started = False
        self._stopping = False
        self._client = self._make_client(will)

    # -- setup -------------------------------------------------------------------------------

    def _ack_keys(self) -> dict[str, Any]:
        if not self.cfg.ack_keys:
            raise ConfigError(['platform.ack_keys: required with ack = "platform" — the '
                               "platform's ack public key(s), so a forged ack cannot make the "
                               "agent forget data (docs/protocol.md, Acknowledgements)"])
        try:
            return load_ack_keys(self.cfg.ack_keys)
        except AckKeyError as e:
            raise ConfigError([str(e)]) from None

    def _make_client(self, will: tuple[str, bytes] | None) -> mqtt.Client:
        cfg = self.cfg
        v5 = cfg.mqtt_version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            # A fresh session each time: what was not acked is resent from SQLite.
            clean_session=None if v5 else True,
        )
        try:
            if cfg.tls:
                if cfg.key_file:
                    read_secret(cfg.key_file, "TLS client key")  # mode and owner, like the signing key
                client.tls_set(
                    ca_certs=cfg.ca_file,
                    certfile=cfg.cert_file,
                    keyfile=cfg.key_file,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            if cfg.username:
                password = None
                if cfg.password_file:
                    secret = read_secret(cfg.password_file, "password file")
                    password = secret.decode("utf-8").strip()
                client.username_pw_set(cfg.username, password)
        except SecretFileError as e:
            raise ConfigError([f"platform: {e}"]) from None
        except (OSError, ssl.SSLError, UnicodeDecodeError) as e:
            # Missing or unreadable key material is a configuration problem: one clear line.
            files = ", ".join(
                f"{k} = {v}"
                for k, v in (("ca_file", cfg.ca_file), ("cert_file", cfg.cert_file),
                             ("key_file", cfg.key_file), ("password_file", cfg.password_file))
                if v
            )
            where = "platform" if getattr(cfg, "name", MQTT) == MQTT else f"destination {cfg.name}"  # type: ignore[attr-defined]
            raise ConfigError([f"{where}: cannot load {files}: {e}"]) from None
        if will:
            client.will_set(will[0], will[1], qos=1, retain=False)
        # paho sleeps these with time.sleep: fractions of a second work (tests use them). Only
        # the first retry uses them as they are; _next_reconnect sets each later one.
        client.reconnect_delay_set(cfg.reconnect_min, cfg.reconnect_max)  # type: ignore[arg-type]
        client.max_inflight_messages_set(cfg.inflight)
        # Counts in-flight too; room for a forwarder window a little larger than `inflight`.
        client.max_queued_messages_set(cfg.inflight * 2)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    async def start(self) -> None:
        """Begin connecting in the background (also retries the first connect)."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._stopping = False
        cfg = self.cfg
        kwargs: dict[str, Any] = {}
        if cfg.mqtt_version == "5":
            kwargs["clean_start"] = True
        host, port = self.brokers[self._broker]
        self._client.connect_async(host, port, keepalive=cfg.keepalive, **kwargs)
        self._client.loop_start()

    async def stop(self, grace: float = 2.0) -> None:
        """Let in-flight publishes finish for up to `grace` s, then disconnect cleanly."""
        if not self._started:
            return
        waiting = [f for f in self._all_waiters() if not f.done()]
        if waiting and self.connected:
            await asyncio.wait(waiting, timeout=grace)
        self._started = False
        self._stopping = True  # the DISCONNECT we cause is logged once, below
        self._set_down("stopped")  # no new publishes; late waiters get UplinkDown
        client = self._client
        await asyncio.to_thread(lambda: (client.disconnect(), client.loop_stop()))
        log.info("%s disconnected from %s (stopped)", self._label, self.endpoint)

    # -- state -------------------------------------------------------------------------------

    @property
    def max_packet_bytes(self) -> int | None:
        """The largest packet the broker takes: platform.max_packet_bytes, or what an MQTT 5
        broker announced on connect, whichever is smaller; None when neither is known."""
        limits = [n for n in (self.cfg.max_packet_bytes, self._broker_max) if n]
        return min(limits) if limits else None

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    @property
    def endpoint(self) -> str:
        """The broker we are connected to, or trying next: "host:port"."""
        host, port = self.brokers[self._broker]
        return f"{host}:{port}"

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _set_up(self) -> None:
        if not self._started or self._up.is_set():
            return
        self._connect_failures = 0
        self._up.set()
        self.connection_changed.set()

    def _set_down(self, why: str) -> None:
        was_up = self._up.is_set()
        self._up.clear()
        if was_up:
            self.connection_changed.set()
        err = UplinkDown(why)
        for fut in self._all_waiters():
            if not fut.done():
                fut.set_exception(err)
        self._by_mid.clear()
        self._by_id.clear()
        self._digests.clear()

    def _all_waiters(self) -> list[asyncio.Future[None]]:
        return [*self._by_mid.values(), *(f for fs in self._by_id.values() for f in fs)]

    # -- publishing --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, envelope_id: str) -> None:
        """Send at QoS 1; return on PUBACK (ack mode broker) or on the platform's ack.

        Raises UplinkDown (not connected, paho queue full, link lost while waiting),
        AckTimeout (no platform ack within ack_timeout) or PlatformRejected.
        """
        if not self.connected or self._loop is None:
            raise UplinkDown("not connected")
        limit = self.max_packet_bytes
        if limit is not None:
            size = publish_packet_size(topic, payload, v5=self.cfg.mqtt_version == "5")
            if size > limit:
                raise TooLarge(f"{size} bytes as an MQTT packet, the broker takes at most {limit}")
        loop = self._loop
        acked: asyncio.Future[None] = loop.create_future()
        puback: asyncio.Future[None] = loop.create_future()
        mid: int | None = None
        if self.platform_acks:
            self._by_id[envelope_id].append(acked)
            # An ack must name these exact bytes: one for another envelope under this id
            # (a replayed old ack, a seq reused by a restored store) changes nothing.
            self._digests[envelope_id] = hashlib.sha256(payload).hexdigest()
        try:
            info = self._client.publish(topic, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # rc 4 (no connection) or 15 (queue full): paho may keep a copy; the next
                # connect drops it. We never count on it.
                raise UplinkDown(f"publish refused locally: {mqtt.error_string(info.rc)}")
            # paho's on_publish may run before publish() has returned the mid, but our
            # handler hops onto this loop, which cannot run it before this line: registering
            # here, with no await in between, can never miss an early PUBACK.
            mid = info.mid
            self._by_mid[mid] = puback
            if not self.platform_acks:
                await puback
                return
            await self._await_platform_ack(acked, puback, envelope_id)
        finally:
            if mid is not None and self._by_mid.get(mid) is puback:
                del self._by_mid[mid]
            waiters = self._by_id.get(envelope_id)
            if waiters is not None:
                if acked in waiters:
                    waiters.remove(acked)
                if not waiters:
                    del self._by_id[envelope_id]
                    self._digests.pop(envelope_id, None)
            for fut in (acked, puback):
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # mark retrieved: no "exception never retrieved" noise

    async def _await_platform_ack(
        self, acked: asyncio.Future[None], puback: asyncio.Future[None], envelope_id: str
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.ack_timeout
        while True:
            if acked.done():
                return acked.result()  # raises PlatformRejected or UplinkDown
            if puback.done() and puback.exception() is not None:
                raise puback.exception()  # type: ignore[misc]
            left = deadline - loop.time()
            if left <= 0:
                raise AckTimeout(f"no platform ack for {envelope_id} in {self.cfg.ack_timeout:g} s")
            watch = {acked} if puback.done() else {acked, puback}
            await asyncio.wait(watch, timeout=left, return_when=asyncio.FIRST_COMPLETED)

    def _settle_puback(self, fut: asyncio.Future[None], rc: ReasonCode, envelope_id: str) -> None:
        if fut.done():
            return
        if rc.is_failure:
            # MQTT 5 brokers may refuse (not authorised, quota): not the envelope's fault,
            # so retry later rather than reject it forever.
            fut.set_exception(UplinkDown(f"broker refused {envelope_id}: {rc}"))
        else:
            fut.set_result(None)

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed between check and call
                loop.call_soon_threadsafe(fn, *args)

    def _on_pre_connect(self, client: mqtt.Client, _u: Any) -> None:
        """Fail-over: runs in paho's thread inside reconnect(), before the socket is made."""
        if not self._move_on or len(self.brokers) < 2:
            return
        self._move_on = False
        old = self.endpoint
        self._broker = (self._broker + 1) % len(self.brokers)
        host, port = self.brokers[self._broker]
        # paho's public host/port setters refuse while a reconnect is under way, which is
        # exactly when we switch; its private fields are what reconnect() reads next (paho
        # is pinned <3).
        client._host, client._port = host, port
        self._call(self._moved, old)

    def _moved(self, old: str) -> None:
        log.warning("%s: broker %s failed, moving to %s", self._label, old, self.endpoint)
        self.connection_changed.set()

    def _next_reconnect(self, client: mqtt.Client) -> None:
        """Paho's thread, before it waits to reconnect: make that wait our jittered delay."""
        delay = self._reconnect.next()
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            self._move_on = True
            self._call(self._log_refused, rc)
            return
        self._reconnect.reset()
        _forget_paho_outgoing(client)
        if self.platform_acks:
            client.subscribe(self.ack_topic, qos=1)  # connected once the SUBACK is in
        # MQTT 5: the broker's largest packet, if it has a limit (absent: none).
        self._call(self._connected, rc, getattr(props, "MaximumPacketSize", None))

    def _where(self) -> str:
        return self.endpoint

    def _down(self, first: str, detail: str, level: int = logging.WARNING) -> None:
        """The broker is unreachable: one line when that starts, one an hour while it lasts."""
        self._conditions.happening(
            "down", first, f"{self._label}: {self._where()} still unreachable", detail, level=level,
        )

    def _connected(self, rc: ReasonCode, broker_max: int | None = None) -> None:
        self._broker_max = broker_max
        self._connect_failures = 0
        message = (
            f"{self._label} connected to {self._where()} as {self.client_id} ({rc}"
            + (f"; packets up to {broker_max} bytes" if broker_max else "") + ")"
        )
        if not self._conditions.over("down", message):
            log.info("%s", message)
        if not self.platform_acks:
            self._set_up()

    def _log_refused(self, rc: ReasonCode) -> None:
        self._connect_failures += 1
        self._down(f"{self._label} connection to {self._where()} refused: {rc}", f"refused: {rc}")

    def _on_connect_fail(self, client: mqtt.Client, _u: Any) -> None:
        self._move_on = True
        self._next_reconnect(client)
        self._call(self._connect_failed)

    def _connect_failed(self) -> None:
        self._connect_failures += 1
        self._down(
            f"{self._label} cannot connect to {self._where()}; retrying every {self.cfg.reconnect_max:g} s "
            "at most (jittered)" + (", on the next broker in turn" if len(self.brokers) > 1 else ""),
            f"{self._connect_failures} attempts",
        )

    def _on_disconnect(
        self, client: mqtt.Client, _u: Any, _flags: Any, rc: ReasonCode, _props: Any
    ) -> None:
        if not self._stopping:
            self._move_on = True
        self._next_reconnect(client)
        self._call(self._disconnected, rc)

    def _disconnected(self, rc: ReasonCode) -> None:
        if not self._stopping:
            self._down(f"{self._label} disconnected from {self._where()} ({rc})", f"disconnected: {rc}",
                       level=logging.WARNING if rc.is_failure else logging.INFO)
        self._set_down(f"disconnected: {rc}")

    def _on_subscribe(
        self, _client: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _props: Any
    ) -> None:
        bad = [rc for rc in rcs if rc.is_failure]
        self._call(self._subscribed, bad)

    def _subscribed(self, bad: list[ReasonCode]) -> None:
        if bad:
            self._move_on = True
            log.warning("%s: subscribe to %s refused: %s", self._label, self.ack_topic, bad[0])
            return  # without the ack topic, platform mode cannot deliver: stay "down"
        self._set_up()

    def _on_publish(
        self, _client: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _props: Any
    ) -> None:
        self._call(self._puback, mid, rc)

    def _puback(self, mid: int, rc: ReasonCode) -> None:
        fut = self._by_mid.pop(mid, None)
        if fut is not None:  # None: a publish that already gave up (timeout, cancelled)
            self._settle_puback(fut, rc, f"mid {mid}")

    def _on_message(self, _client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Network thread: refuse an oversized payload before copying it (paho already holds
        # it; a copy would double the peak), and parse nothing here.
        size = len(msg.payload)
        if size > MAX_ACK_BYTES:
            self._call(self._ignore, msg.topic, f"{size} bytes, more than the {MAX_ACK_BYTES} an ack may have")
            return
        self._call(self._platform_acks, msg.topic, bytes(msg.payload))

    def _platform_acks(self, topic: str, payload: bytes) -> None:
        if topic != self.ack_topic:
            self._ignore(topic, "not our ack topic")
            return
        try:
            acks = parse_acks(payload, self.ack_keys, self.enterprise, self.gateway)
        except AckRefused as e:
            self._ignore(topic, str(e))
            return
        for ack in acks:
            waiters = self._by_id.get(ack.id)
            if not waiters:
                self._ignore(topic, f"ack for {printable(ack.id, 100)}, which is not in flight")
                continue
            if self._digests.get(ack.id) != ack.sha256:
                self._ignore(topic, f"ack for {printable(ack.id, 100)} names other bytes (sha256 "
                             f"{ack.sha256[:16]}…)")
                continue
            del self._by_id[ack.id]
            self._digests.pop(ack.id, None)
            for fut in waiters:
                if fut.done():
                    continue
                if ack.result == "rejected":
                    fut.set_exception(PlatformRejected(ack.reason or "no reason"))
                else:
                    fut.set_result(None)

    def _ignore(self, topic: str, why: str) -> None:
        """Count an ack that changed nothing; log at most one line a minute (it may be a flood)."""
        self.acks_ignored += 1
        self._ignored_since_log += 1
        now = time.monotonic()
        if now - self._ignored_logged_at >= IGNORED_LOG_EVERY:
            more = self._ignored_since_log - 1
            log.warning("mqtt ack on %s ignored: %s%s", printable(topic, 120), why,
                        f" (and {more} more since the last such line)" if more else "")
            self._ignored_logged_at = now
            self._ignored_since_log = 0


def _forget_paho_outgoing(client: mqtt.Client) -> None:
    """Drop what paho kept from an earlier connection before it resends it (see top).

    Private paho state (pinned <3): an unknown layout only costs harmless duplicates.
    """
    lock = getattr(client, "_out_message_mutex", None)
    messages = getattr(client, "_out_messages", None)
    if lock is None or messages is None:
        return
    with lock:
        messages.clear()
        client._inflight_messages = 0


def publish_packet_size(topic: str, payload: bytes, v5: bool) -> int:
    """Bytes of the QoS 1 PUBLISH packet carrying `payload` to `topic` (MQTT 3.1.1 §3.3, 5.0
    §3.3; we send no properties): fixed header, topic, packet id, payload."""
    remaining = 2 + len(topic.encode("utf-8")) + 2 + (1 if v5 else 0) + len(payload)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining
