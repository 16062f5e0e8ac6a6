"""An independent verifier of wire format v1, written from docs/protocol.md alone.

It deliberately does not import agent.protocol.canonical or agent.protocol.envelope: it uses json, the rfc8785
package and cryptography directly, so a bug in the agent's own encoder cannot hide itself by
being shared with the check. Used by the test suite and the HIL platform simulator.

    v = ChainVerifier({kid: raw_public_key}, enterprise="…", gateway="…")
    env = v.accept(payload)      # VerificationError(reason) when it must be rejected
    v.last_duplicate, v.duplicates, v.gaps(), v.max_seq
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import datetime
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FIELDS = frozenset(
    {"v", "id", "seq", "type", "enterprise", "gateway", "created", "prev", "body", "alg", "kid",
     "sig"}
)
TYPES = frozenset({"readings", "interval", "daily", "monthly", "manual", "status"})
MAX_SAFE_INTEGER = 2**53 - 1
ZERO_PREV = "0" * 64
CREATED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}")
HEX64 = re.compile(r"[0-9a-f]{64}")
DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
NEGATIVE_ZERO = re.compile(r"-0(\.0+)?")
QUALITIES = range(6)


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256: the next envelope's `prev` is sha256_hex(this envelope's bytes)."""
    return hashlib.sha256(data).hexdigest()


class VerificationError(Exception):
    """The payload must be rejected; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ChainVerifier:
    def __init__(
        self,
        public_keys: dict[str, bytes],
        enterprise: str,
        gateway: str,
        *,
        strict_order: bool = False,
    ):
        """public_keys: kid -> raw 32-byte Ed25519 public key. strict_order: also reject any
        envelope that is not exactly max_seq + 1 (the agent's normal, in-order delivery)."""
        self.keys = {kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in public_keys.items()}
        self.enterprise = enterprise
        self.gateway = gateway
        self.strict_order = strict_order
        self.max_seq = 0
        self.accepted = 0  # distinct envelopes accepted
        self.duplicates = 0  # byte-identical resends of accepted envelopes
        self.last_duplicate = False  # whether the last accept() was a duplicate
        self._hash: dict[int, str] = {}  # seq -> SHA-256 of its wire bytes
        self._prev: dict[int, str] = {}  # seq -> its prev field

    def accept(self, payload: bytes, topic: str | None = None) -> dict[str, Any]:
        """Verify one payload (docs/protocol.md, "Verification"); return the parsed envelope.
        With `topic`, also check it is {prefix}/{E}/{G}/up/{type} for this envelope."""
        self.last_duplicate = False
        env = _parse(payload)
        _check_fields(env)
        suffix = f"/{env['enterprise']}/{env['gateway']}/up/{env['type']}"
        if topic is not None and not (topic.endswith(suffix) and len(topic) > len(suffix)):
            raise VerificationError(f"topic {topic!r} does not match the envelope (…{suffix})")
        if rfc8785.dumps(env) != payload:
            raise VerificationError("payload is not the canonical form of its JSON")
        key = self.keys.get(env["kid"])
        if key is None:
            raise VerificationError(f"unknown kid {env['kid']!r}")
        signed = rfc8785.dumps({k: v for k, v in env.items() if k != "sig"})
        try:
            key.verify(base64.b64decode(env["sig"]), signed)
        except InvalidSignature:
            raise VerificationError("bad signature") from None
        if env["enterprise"] != self.enterprise or env["gateway"] != self.gateway:
            raise VerificationError(
                f"envelope is from {env['enterprise']}/{env['gateway']}, "
                f"expected {self.enterprise}/{self.gateway}"
            )
        seq = env["seq"]
        if env["id"] != f"{self.enterprise}-{self.gateway}-{seq}":
            raise VerificationError(f"id {env['id']!r} does not match seq {seq}")

        digest = hashlib.sha256(payload).hexdigest()
        if seq in self._hash:
            if self._hash[seq] == digest:
                self.duplicates += 1
                self.last_duplicate = True
                return env
            raise VerificationError(f"conflict: {env['id']} already received with other bytes")
        if seq == 1 and env["prev"] != ZERO_PREV:
            raise VerificationError("seq 1 must have prev = 64 zeros")
        if seq - 1 in self._hash and env["prev"] != self._hash[seq - 1]:
            raise VerificationError(f"broken chain: prev of seq {seq} is not the hash of seq {seq - 1}")
        if seq + 1 in self._prev and self._prev[seq + 1] != digest:
            raise VerificationError(f"broken chain: prev of seq {seq + 1} is not the hash of seq {seq}")
        if self.strict_order and seq != self.max_seq + 1:
            raise VerificationError(f"out of order: expected seq {self.max_seq + 1}, got {seq}")
        _check_body(env["type"], env["body"])

        self._hash[seq] = digest
        self._prev[seq] = env["prev"]
        self.max_seq = max(self.max_seq, seq)
        self.accepted += 1
        return env

    def gaps(self) -> list[int]:
        """Sequence numbers below max_seq that have not been accepted."""
        return [s for s in range(1, self.max_seq + 1) if s not in self._hash]

    def hash_of(self, seq: int) -> str | None:
        """SHA-256 of the accepted wire bytes of `seq` (what seq + 1 carries as prev)."""
        return self._hash.get(seq)


def _parse(payload: bytes) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise VerificationError("duplicate object key")
        return obj

    def no_float(text: str) -> Any:
        raise VerificationError(f"float {text} is not allowed")

    def no_constant(text: str) -> Any:
        raise VerificationError(f"{text} is not allowed")

    try:
        text = payload.decode("utf-8")
        env = json.loads(
            text, object_pairs_hook=no_duplicates, parse_float=no_float, parse_constant=no_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise VerificationError(f"not UTF-8 JSON: {e}") from None
    if not isinstance(env, dict):
        raise VerificationError("payload is not a JSON object")
    _check_values(env, "")
    return env


def _check_values(value: Any, path: str) -> None:
    """Integers and strings only, anywhere; integers within ±(2^53 − 1)."""
    if isinstance(value, bool) or value is None:
        raise VerificationError(f"{path or 'envelope'}: {json.dumps(value)} is not allowed")
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise VerificationError(f"{path}: integer outside ±(2^53 − 1)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_values(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_values(v, f"{path}[{i}]")
    elif not isinstance(value, str):
        raise VerificationError(f"{path}: unexpected {type(value).__name__}")


def _check_fields(env: dict[str, Any]) -> None:
    if set(env) != FIELDS:
        missing, extra = sorted(FIELDS - set(env)), sorted(set(env) - FIELDS)
        raise VerificationError(f"wrong fields: missing {missing}, unexpected {extra}")
    for name in FIELDS - {"v", "seq", "body"}:
        if not isinstance(env[name], str):
            raise VerificationError(f"{name}: expected a string")
    if not isinstance(env["v"], int) or env["v"] != 1:
        raise VerificationError(f"v: expected 1, got {env['v']!r}")
    if not isinstance(env["seq"], int) or env["seq"] < 1:
        raise VerificationError(f"seq: expected an integer ≥ 1, got {env['seq']!r}")
    if not isinstance(env["body"], dict):
        raise VerificationError("body: expected an object")
    if env["type"] not in TYPES:
        raise VerificationError(f"type: unknown {env['type']!r}")
    if env["alg"] != "ed25519":
        raise VerificationError(f"alg: expected ed25519, got {env['alg']!r}")
    if not CREATED.fullmatch(env["created"]):
        raise VerificationError(f"created: not RFC 3339 seconds with numeric offset: {env['created']!r}")
    try:
        datetime.fromisoformat(env["created"])
    except ValueError:
        raise VerificationError(f"created: not a valid time: {env['created']!r}") from None
    if not HEX64.fullmatch(env["prev"]):
        raise VerificationError("prev: expected 64 lowercase hex digits")
    try:
        sig = base64.b64decode(env["sig"], validate=True)
    except binascii.Error:
        raise VerificationError("sig: not standard base64") from None
    # Re-encoding catches non-zero padding bits: one signature, one spelling.
    if len(sig) != 64 or base64.b64encode(sig).decode() != env["sig"]:
        raise VerificationError("sig: expected the canonical base64 of 64 bytes")


def _check_body(type_: str, body: dict[str, Any]) -> None:
    if type_ != "readings":
        return  # other bodies are specified with the features that produce them
    if set(body) != {"samples"} or not isinstance(body["samples"], list) or not body["samples"]:
        raise VerificationError("body: a readings body is {\"samples\": [non-empty array]}")
    for i, s in enumerate(body["samples"]):
        where = f"body.samples[{i}]"
        if not (isinstance(s, list) and len(s) == 5):
            raise VerificationError(f"{where}: expected [meter, point, ts, value, quality]")
        meter, point, ts, value, quality = s
        if not (isinstance(meter, str) and meter and isinstance(point, str) and point):
            raise VerificationError(f"{where}: meter and point must be non-empty strings")
        if not isinstance(ts, int) or ts < 0:
            raise VerificationError(f"{where}: ts must be Unix milliseconds")
        if not isinstance(quality, int) or quality not in QUALITIES:
            raise VerificationError(f"{where}: unknown quality {quality!r}")
        if not isinstance(value, str):
            raise VerificationError(f"{where}: value must be a string")
        if value and (not DECIMAL.fullmatch(value) or NEGATIVE_ZERO.fullmatch(value)):
            raise VerificationError(f"{where}: value {value!r} is not a plain decimal")
        if (value == "") != (quality != 0):
            raise VerificationError(f"{where}: value must be empty exactly when quality is not 0")
