"""Envelopes: wire format v1 (docs/protocol.md) — ids, topics, values, sealing and signing.

An envelope is built once, when a batch is sealed, and its bytes are stored in the outbox and
resent unchanged forever after. Signing costs ~0.05 ms per envelope here and ~10x that on an
ARM gateway, so envelopes carry batches of samples, never one sample each.
"""

from __future__ import annotations

import base64
import decimal
import math
import re
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from agent.protocol.canonical import MAX_SAFE_INTEGER, canonical
from agent.protocol.signing import Signer

VERSION = 1
ENVELOPE_TYPES = ("readings", "interval", "daily", "monthly", "manual", "status")
GENESIS_PREV = "0" * 64  # `prev` of seq 1: there is no previous envelope
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Enough digits for any double in fixed point (~309 integer digits) plus 9 decimals, so
# quantize never runs out of precision.
_DECIMAL_CONTEXT = decimal.Context(prec=400, rounding=ROUND_HALF_EVEN)


def envelope_id(enterprise: str, gateway: str, seq: int) -> str:
    return f"{enterprise}-{gateway}-{seq}"


def topic_for(prefix: str, enterprise: str, gateway: str, type: str) -> str:
    """Where an envelope of `type` is published: {prefix}/{E}/{G}/up/{type}."""
    return _topic(prefix, enterprise, gateway, "up", type)


def ack_topic(prefix: str, enterprise: str, gateway: str) -> str:
    """Where the platform acknowledges envelopes (ack mode `platform`)."""
    return _topic(prefix, enterprise, gateway, "down", "ack")


def will_topic(prefix: str, enterprise: str, gateway: str) -> str:
    """The MQTT last-will topic: the broker publishes there when the gateway drops off."""
    return _topic(prefix, enterprise, gateway, "will")


def _topic(prefix: str, enterprise: str, gateway: str, *rest: str) -> str:
    for name, part in (("enterprise", enterprise), ("gateway", gateway)):
        # One topic level each; a '/', '+' or '#' would route messages to someone else's tree.
        if not part or any(c in part for c in "/+#"):
            raise ValueError(f"{name} {part!r} cannot be an MQTT topic level")
    return "/".join((prefix, enterprise, gateway, *rest))


def format_value(value: float | int | None, decimals: int) -> str:
    """A measured value as the decimal string the wire carries: "12345.67", never 1.2e4.

    Rounds the exact binary value of the float to `decimals` places, half to even (the same
    result as format(value, f".{decimals}f")), so 12345.669921875 (a float32 reading of
    12345.67) becomes "12345.67". A negative value that rounds to zero is "0.00", not "-0.00".
    None — and NaN or infinity, which have no decimal form — become "" (a gap); the sample's
    quality code says why.
    """
    if value is None:
        return ""
    if type(value) is float and 0 <= decimals <= 9:
        # Hot path (every sample is formatted once): float formatting rounds the exact binary
        # value half to even, the same as the Decimal path below, at a fifth of the cost.
        if not math.isfinite(value):
            return ""
        text = f"{value:.{decimals}f}"
        if text[0] == "-" and not text.strip("-0."):
            text = text[1:]
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, bool) or not 0 <= decimals <= 9:
        raise ValueError(f"format_value({value!r}, {decimals!r}): expected a number and 0–9 places")
    exact = Decimal(value)  # exact binary value of a float, no repr() round trip
    q = exact.quantize(Decimal(1).scaleb(-decimals), context=_DECIMAL_CONTEXT)
    if q.is_zero():
        q = q.copy_abs()
    return f"{q:f}"


def format_created(created: datetime) -> str:
    """RFC 3339, seconds precision, numeric offset: 2026-11-22T10:15:00+08:00."""
    offset = created.utcoffset()
    if offset is None:
        raise ValueError(f"created {created!r} has no time zone; pass an aware datetime")
    if offset.microseconds or offset.seconds % 60:
        # Historical local mean times (e.g. +08:05:43) have no RFC 3339 form.
        raise ValueError(f"created {created!r}: UTC offset {offset} is not whole minutes")
    return created.isoformat(timespec="seconds")


def build_envelope(
    *,
    seq: int,
    prev: str,
    type: str,
    enterprise: str,
    gateway: str,
    created: datetime,
    body: dict[str, Any] | None = None,
    signer: Signer,
    body_json: bytes | None = None,
) -> bytes:
    """Seal and sign one envelope; return its wire bytes (canonical JSON, `sig` included).

    The body is given either as `body` (canonicalised here) or, by a writer that produces
    canonical JSON itself (the sealer's readings, agent/protocol/sample_rows.py), as `body_json`: the
    RFC 8785 bytes of the body object, spliced in unchecked.
    """
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SAFE_INTEGER:
        raise ValueError(f"seq: expected an integer from 1 to 2^53−1, got {seq!r}")
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise ValueError(f"prev: expected 64 lowercase hex digits, got {prev!r}")
    if seq == 1 and prev != GENESIS_PREV:
        raise ValueError(f"prev: seq 1 starts the chain, so prev must be {GENESIS_PREV}")
    if type not in ENVELOPE_TYPES:
        raise ValueError(f"type: expected one of {', '.join(ENVELOPE_TYPES)}, got {type!r}")
    if body_json is None:
        if not isinstance(body, dict):
            raise TypeError(f"body: expected a dict, got {body.__class__.__name__}")
        # Canonicalise the (large) body once and splice it into both the signed form and the
        # wire form; wrapping it in {"body": …} makes refusal messages name the path from the
        # envelope.
        body_json = canonical({"body": body})[len(b'{"body":'):-1]
    elif body is not None or not body_json.startswith(b"{"):
        raise TypeError("pass either body (a dict) or body_json (its canonical bytes)")
    fields = {
        "v": canonical(VERSION),
        "id": canonical(envelope_id(enterprise, gateway, seq)),
        "seq": canonical(seq),
        "type": canonical(type),
        "enterprise": canonical(enterprise),
        "gateway": canonical(gateway),
        "created": canonical(format_created(created)),
        "prev": canonical(prev),
        "body": body_json,
        "alg": canonical(signer.alg),
        "kid": canonical(signer.key_id),
    }
    signature = signer.sign(_object(fields))
    fields["sig"] = canonical(base64.b64encode(signature).decode("ascii"))
    return _object(fields)


def _object(fields: dict[str, bytes]) -> bytes:
    # The envelope's keys are ASCII, where UTF-16 order (RFC 8785) is plain byte order.
    members = (b'"' + key.encode("ascii") + b'":' + fields[key] for key in sorted(fields))
    return b"{" + b",".join(members) + b"}"
