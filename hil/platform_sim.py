"""A provincial platform, simulated: verifies, de-duplicates, acknowledges and stores envelopes.

Written from docs/protocol.md alone (it imports nothing from `agent`), so it checks the
agent against the contract rather than against itself. It subscribes on a real broker to
`{prefix}/+/+/up/#` with a persistent session and, for every message:

1. parses it; checks `v`, the integer/string-only rule, `alg`, `kid` (a registered key);
2. verifies the Ed25519 signature over the JCS canonical JSON without `sig`;
3. checks `id == E-G-seq` and that the wire bytes are canonical;
4. de-duplicates by id (a resend must be byte-identical, else it is rejected as a conflict);
5. checks `prev` against the stored predecessor (and the successor's `prev` when a late
   predecessor arrives); a missing predecessor is a gap, not a rejection;
6. stores what it accepted in its own SQLite and, with `ack=True`, publishes
   `{"v":1,"acks":[{"id":…,"result":…}]}` on `{prefix}/{E}/{G}/down/ack`.

Controls (thread-safe, from the rig's timeline): `ack`, `reject_next(n)`, `go_away()` /
`come_back()`. Run in-process (`PlatformSim(...).start()`) or `python -m hil platform`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

FIELDS = {"v", "id", "seq", "type", "enterprise", "gateway", "created", "prev", "body", "alg",
          "kid", "sig"}
ZERO_PREV = "0" * 64
TYPES = {"readings", "interval", "daily", "monthly", "manual", "status"}
VALUE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
CREATED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}")
HEX64 = re.compile(r"[0-9a-f]{64}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS envelope (
    id TEXT PRIMARY KEY, enterprise TEXT, gateway TEXT, seq INTEGER, type TEXT,
    created TEXT, received_ms INTEGER, sha256 TEXT, prev TEXT, wire BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS envelope_seq ON envelope (enterprise, gateway, seq);
CREATE TABLE IF NOT EXISTS sample (
    envelope TEXT, meter TEXT, point TEXT, ts INTEGER, value TEXT, quality INTEGER);
CREATE TABLE IF NOT EXISTS rejection (
    id TEXT, topic TEXT, reason TEXT, received_ms INTEGER, wire BLOB);
"""


def canonical(obj: Any) -> bytes:
    """RFC 8785 for what envelopes may hold (dicts, lists, str, int); anything else raises."""
    return _canon(obj).encode("utf-8")


def _canon(o: Any) -> str:
    if isinstance(o, bool) or o is None or isinstance(o, float):
        raise ValueError(f"{o!r}: only integers and strings are allowed")
    if isinstance(o, int):
        if abs(o) > 2**53 - 1:
            raise ValueError(f"{o}: integer beyond ±(2^53 − 1)")
        return str(o)
    if isinstance(o, str):
        # json.dumps escapes exactly like ECMAScript JSON.stringify for these characters.
        return json.dumps(o, ensure_ascii=False)
    if isinstance(o, list):
        return "[" + ",".join(_canon(x) for x in o) + "]"
    if isinstance(o, dict):
        keys = sorted(o, key=lambda k: k.encode("utf-16-be"))  # UTF-16 code unit order
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_canon(o[k])}" for k in keys) + "}"
    raise ValueError(f"{type(o).__name__} is not allowed in an envelope")


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


class Rejected(Exception):
    """The envelope fails verification; the message is the reason sent back in the ack."""


@dataclass
class Counters:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    chain_breaks: int = 0  # prev did not match the stored predecessor
    gaps_seen: int = 0  # arrived before its predecessor (reported, not rejected)
    acks_sent: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class PlatformSim:
    """The platform side of the wire format, on a real broker, storing into `db_path`."""

    def __init__(
        self,
        broker_port: int,
        public_keys: dict[str, bytes],
        db_path: str | Path,
        prefix: str = "energy",
        ack: bool = True,
        host: str = "127.0.0.1",
        client_id: str = "platform-sim",
    ) -> None:
        self.keys = {kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in public_keys.items()}
        self.prefix, self.ack = prefix, ack
        self.host, self.port = host, broker_port
        self.counters = Counters()
        self._lock = threading.RLock()
        self._reject_next = 0
        self._away = False
        self.db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self.db.executescript("PRAGMA journal_mode=WAL;" + SCHEMA)
        # Persistent session: while the platform is away the broker queues for it, as a real
        # platform's subscription does; a broker restart without persistence forgets it.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_a: self.connected.clear()
        self.connected = threading.Event()

    # -- lifecycle and controls ------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> PlatformSim:
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"platform sim: no connection to {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            self.db.close()

    def go_away(self) -> None:
        """Disconnect and stay away (the broker keeps queueing for our session)."""
        self._away = True
        self.connected.clear()
        self.client.disconnect()
        self.client.loop_stop()

    def come_back(self, timeout: float = 10.0) -> None:
        self._away = False
        self.client.reconnect()
        self.client.loop_start()
        self.connected.wait(timeout)

    def reject_next(self, n: int) -> None:
        """Reject the next n new envelopes (reason "told to reject"), as a platform fault."""
        with self._lock:
            self._reject_next = n

    # -- MQTT ------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if getattr(rc, "is_failure", False):
            return
        client.subscribe(f"{self.prefix}/+/+/up/#", qos=1)
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            result, env_id, where = self.accept(msg.topic, payload)
        except Exception:  # a platform bug must not kill the network thread
            log.exception("platform sim: handling %s failed", msg.topic)
            return
        if self.ack and env_id and where:
            self._send_ack(where, env_id, result)

    def _send_ack(self, where: tuple[str, str], env_id: str, result: tuple[str, str]) -> None:
        outcome, reason = result
        item = {"id": env_id, "result": outcome}
        if reason:
            item["reason"] = reason
        topic = f"{self.prefix}/{where[0]}/{where[1]}/down/ack"
        self.client.publish(topic, json.dumps({"v": 1, "acks": [item]}), qos=1)
        self.counters.acks_sent += 1

    # -- verification ----------------------------------------------------------------------

    def accept(
        self, topic: str, payload: bytes
    ) -> tuple[tuple[str, str], str | None, tuple[str, str] | None]:
        """Verify and store one message: ((result, reason), id, (E, G)) for the ack."""
        with self._lock:
            env: dict[str, Any] = {}
            try:
                env = self._parse(payload)
                where = (env["enterprise"], env["gateway"])
                self._check(topic, env, payload)
                outcome = self._store(env, payload)
            except Rejected as e:
                reason = str(e)
                self.counters.rejected += 1
                self.counters.reasons[reason] = self.counters.reasons.get(reason, 0) + 1
                self.db.execute(
                    "INSERT INTO rejection VALUES (?,?,?,?,?)",
                    (env.get("id") if isinstance(env.get("id"), str) else None, topic, reason,
                     _now_ms(), payload),
                )
                log.warning("platform sim: rejected %s: %s", env.get("id", topic), reason)
                ok_id = isinstance(env.get("id"), str) and isinstance(env.get("gateway"), str)
                return ("rejected", reason), env.get("id") if ok_id else None, (
                    (env["enterprise"], env["gateway"]) if ok_id else None)
            return (outcome, ""), env["id"], where

    def _parse(self, payload: bytes) -> dict[str, Any]:
        try:
            env = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as e:
            raise Rejected(f"not JSON: {e}") from None
        if not isinstance(env, dict):
            raise Rejected("not a JSON object")
        if env.get("v") != 1:
            raise Rejected(f"unsupported version {env.get('v')!r}")
        if set(env) != FIELDS:
            raise Rejected(f"fields differ from v1: {sorted(set(env) ^ FIELDS)}")
        for k in ("id", "type", "enterprise", "gateway", "created", "prev", "alg", "kid", "sig"):
            if not isinstance(env[k], str):
                raise Rejected(f"{k}: expected a string")
        if not isinstance(env["seq"], int) or isinstance(env["seq"], bool) or env["seq"] < 1:
            raise Rejected("seq: expected a positive integer")
        return env

    def _check(self, topic: str, env: dict[str, Any], payload: bytes) -> None:
        if env["type"] not in TYPES:
            raise Rejected(f"unknown type {env['type']!r}")
        if not CREATED.fullmatch(env["created"]) or not HEX64.fullmatch(env["prev"]):
            raise Rejected("created or prev not in the exact form")
        if env["alg"] != "ed25519":
            raise Rejected(f"unsupported alg {env['alg']!r}")
        key = self.keys.get(env["kid"])
        if key is None:
            raise Rejected(f"unknown kid {env['kid']!r}")
        unsigned = {k: v for k, v in env.items() if k != "sig"}
        try:
            signed = canonical(unsigned)
            wire = canonical(env)
        except ValueError as e:
            raise Rejected(f"not integers and strings only: {e}") from None
        try:
            key.verify(base64.b64decode(env["sig"], validate=True), signed)
        except (InvalidSignature, binascii.Error, ValueError):
            raise Rejected("bad signature") from None
        if wire != payload:
            raise Rejected("wire bytes are not the canonical form")
        expected_id = f"{env['enterprise']}-{env['gateway']}-{env['seq']}"
        if env["id"] != expected_id:
            raise Rejected(f"id {env['id']!r} is not {expected_id!r}")
        want = f"{self.prefix}/{env['enterprise']}/{env['gateway']}/up/{env['type']}"
        if topic != want:
            raise Rejected(f"topic {topic!r} is not {want!r}")
        if env["type"] == "readings":
            _check_readings(env["body"])
        if self._reject_next > 0:
            self._reject_next -= 1
            raise Rejected("told to reject")

    def _store(self, env: dict[str, Any], payload: bytes) -> str:
        digest = hashlib.sha256(payload).hexdigest()
        row = self.db.execute("SELECT sha256 FROM envelope WHERE id = ?", (env["id"],)).fetchone()
        if row is not None:
            if row[0] != digest:
                raise Rejected("resend differs from the envelope first received under this id")
            self.counters.duplicates += 1
            return "duplicate"
        e, g, seq = env["enterprise"], env["gateway"], env["seq"]
        if seq == 1:
            if env["prev"] != ZERO_PREV:
                raise Rejected("seq 1 must have prev = 64 zeros")
        else:
            before = self._sha_at(e, g, seq - 1)
            if before is None:
                self.counters.gaps_seen += 1
            elif before != env["prev"]:
                self.counters.chain_breaks += 1
                raise Rejected(f"prev does not match envelope {seq - 1}")
        after = self.db.execute(
            "SELECT prev FROM envelope WHERE enterprise=? AND gateway=? AND seq=?", (e, g, seq + 1)
        ).fetchone()
        if after is not None and after[0] != digest:
            self.counters.chain_breaks += 1
            raise Rejected(f"envelope {seq + 1} already names another predecessor")
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO envelope VALUES (?,?,?,?,?,?,?,?,?,?)",
            (env["id"], e, g, seq, env["type"], env["created"], _now_ms(), digest, env["prev"],
             payload),
        )
        if env["type"] == "readings":
            samples = env["body"].get("samples", []) if isinstance(env["body"], dict) else []
            self.db.executemany(
                "INSERT INTO sample VALUES (?,?,?,?,?,?)",
                [(env["id"], *s) for s in samples if isinstance(s, list) and len(s) == 5],
            )
        self.db.execute("COMMIT")
        self.counters.accepted += 1
        return "accepted"

    def _sha_at(self, e: str, g: str, seq: int) -> str | None:
        row = self.db.execute(
            "SELECT sha256 FROM envelope WHERE enterprise=? AND gateway=? AND seq=?", (e, g, seq)
        ).fetchone()
        return row[0] if row else None

    # -- what the checker asks -------------------------------------------------------------

    def chain(self, enterprise: str, gateway: str) -> dict[str, Any]:
        """Sequence coverage and chain integrity over everything accepted so far."""
        with self._lock:
            rows = self.db.execute(
                "SELECT seq, sha256, prev FROM envelope WHERE enterprise=? AND gateway=? "
                "ORDER BY seq", (enterprise, gateway)).fetchall()
        seqs = [r[0] for r in rows]
        top = seqs[-1] if seqs else 0
        missing = sorted(set(range(1, top + 1)) - set(seqs))
        by_seq = {r[0]: r for r in rows}
        broken = [s for s, _sha, prev in rows
                  if s > 1 and s - 1 in by_seq and by_seq[s - 1][1] != prev]
        return {"envelopes": len(rows), "max_seq": top, "missing": missing, "broken": broken,
                "intact": not missing and not broken}

    def samples(self) -> list[tuple[str, str, str, int, str, int]]:
        """(envelope id, meter, point, ts, value, quality) of every accepted readings sample."""
        with self._lock:
            return self.db.execute("SELECT * FROM sample").fetchall()

    def final_reports(self, type_: str) -> dict[str, dict[str, Any]]:
        """period -> body of the report a platform keeps as final: a restatement replaces the
        envelope it names in `supersedes` (docs/protocol.md, Restatements); raises if one
        names an envelope of another period or one never received."""
        with self._lock:
            rows = self.db.execute("SELECT id, wire FROM envelope WHERE type = ? ORDER BY seq",
                                   (type_,)).fetchall()
        final: dict[str, tuple[str, dict[str, Any]]] = {}
        for env_id, wire in rows:
            body = json.loads(wire)["body"]
            period = body.get("period", "")
            sup = body.get("supersedes")
            if sup and (period not in final or final[period][0] != sup):
                raise ValueError(f"{env_id} supersedes {sup}, not the final {type_} of {period}")
            final[period] = (env_id, body)
        return {p: b for p, (_, b) in final.items()}

    def sample_count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM sample").fetchone()[0])


def _check_readings(body: Any) -> None:
    """docs/protocol.md "readings": one member `samples`, non-empty, five typed positions."""
    if not isinstance(body, dict) or set(body) != {"samples"}:
        raise Rejected("readings body: expected exactly one member, samples")
    samples = body["samples"]
    if not isinstance(samples, list) or not samples:
        raise Rejected("readings body: samples must be a non-empty array")
    for i, s in enumerate(samples):
        ok = (isinstance(s, list) and len(s) == 5 and isinstance(s[0], str)
              and isinstance(s[1], str) and isinstance(s[2], int) and isinstance(s[3], str)
              and isinstance(s[4], int) and 0 <= s[4] <= 5)
        if not ok:
            raise Rejected(f"readings body: samples[{i}] is not [meter, point, ts, value, quality]")
        if (s[3] == "") != (s[4] != 0) or (s[3] and not VALUE.fullmatch(s[3])):
            raise Rejected(f"readings body: samples[{i}] value {s[3]!r} with quality {s[4]}")
        if s[3].startswith("-") and not s[3].strip("-0."):
            raise Rejected(f"readings body: samples[{i}] is a negative zero")


def _now_ms() -> int:
    return int(time.time() * 1000)
