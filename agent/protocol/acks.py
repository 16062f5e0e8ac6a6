"""The platform's signed acknowledgements (ack mode `platform`, docs/protocol.md).

Whoever may publish on the broker must not be able to make the agent forget data, so an ack
counts only when the platform's Ed25519 signature over its RFC 8785 form (without `sig`)
verifies with a key the agent was configured with, it names this gateway, and each entry
names an envelope in flight together with the SHA-256 of that envelope's exact bytes.

Everything here treats the payload as hostile: its length is checked before anything is
parsed, its nesting depth before `json.loads` (100 KB of `[` is a RecursionError there), and
every string that may reach a log goes through `printable` (escaped, truncated).
Pure functions; the MQTT uplink (agent/uplink/mqtt.py) and any other destination that gets
acks from the platform use them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from agent.protocol.canonical import canonical
from agent.protocol.signing import Signer, key_id_for

# An ack message with ~100 entries of ~150 bytes; anything larger is refused unread.
MAX_ACK_BYTES = 16 * 1024
MAX_ACK_ENTRIES = 256
# {"acks": [{...}]} is three levels deep; one spare.
MAX_ACK_DEPTH = 4
MAX_REASON_CHARS = 200  # of a `reason`, as logged and stored
RESULTS = ("accepted", "duplicate", "rejected")
FIELDS = {"v", "enterprise", "gateway", "acks", "alg", "kid", "sig"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
# RFC 8410: an Ed25519 SubjectPublicKeyInfo is these 12 DER bytes and then the raw key.
_SPKI_ED25519_PREFIX = bytes.fromhex("302a300506032b6570032100")
_MAX_KEY_FILE = 4096


class AckRefused(Exception):
    """This ack message changes nothing; the message says why (already printable)."""


class AckKeyError(Exception):
    """A configured platform ack key that cannot be used: one line saying which and why."""


@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    result: str  # accepted | duplicate | rejected
    sha256: str  # hex SHA-256 of the envelope's wire bytes the platform got
    reason: str  # printable, truncated; "" unless rejected


def printable(text: object, limit: int = MAX_REASON_CHARS) -> str:
    """`text` safe for one log line: control characters, quotes and non-ASCII escaped (a
    newline can never start a forged line), cut to `limit` characters with a marker."""
    s = text if isinstance(text, str) else repr(text)
    cut = len(s) > limit
    out = s[:limit].encode("unicode_escape").decode("ascii")
    return out + (f"…(+{len(s) - limit} chars)" if cut else "")


def too_deep(payload: bytes, limit: int = MAX_ACK_DEPTH) -> bool:
    """True when `payload` nests arrays/objects deeper than `limit` (strings skipped)."""
    depth = 0
    in_string = escaped = False
    for b in payload:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif b in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_acks(payload: bytes, keys: dict[str, VerifyKey], enterprise: str,
               gateway: str) -> list[Ack]:
    """The verified entries of one ack message, or AckRefused."""
    if len(payload) > MAX_ACK_BYTES:
        raise AckRefused(f"{len(payload)} bytes, more than the {MAX_ACK_BYTES} an ack may have")
    if too_deep(payload):
        raise AckRefused(f"nested deeper than {MAX_ACK_DEPTH} levels")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise AckRefused(f"not JSON: {printable(str(e), 80)}") from None
    if not isinstance(doc, dict) or set(doc) != FIELDS:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise AckRefused(f"expected an object with exactly {sorted(FIELDS)}, got {printable(got, 120)}")
    if doc["v"] != 1 or doc["alg"] != "ed25519":
        raise AckRefused(f"unsupported v {printable(doc['v'], 20)} or alg {printable(doc['alg'], 20)}")
    kid, sig = doc["kid"], doc["sig"]
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise AckRefused(f"signed with unknown kid {printable(kid, 40)}")
    try:
        signed = canonical({k: v for k, v in doc.items() if k != "sig"})
        raw_sig = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
        key.verify(signed, raw_sig)
    except (ValueError, TypeError, binascii.Error, BadSignatureError):
        raise AckRefused("signature does not verify") from None
    # Signed by the platform from here on, but still checked: it must be meant for us.
    if doc["enterprise"] != enterprise or doc["gateway"] != gateway:
        raise AckRefused(f"addressed to {printable(doc['enterprise'], 40)}/"
                         f"{printable(doc['gateway'], 70)}, not {enterprise}/{gateway}")
    entries = doc["acks"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ACK_ENTRIES:
        raise AckRefused(f"acks: expected 1 to {MAX_ACK_ENTRIES} entries")
    return [_entry(i, e) for i, e in enumerate(entries)]


def _entry(i: int, e: object) -> Ack:
    if not isinstance(e, dict) or not {"id", "result", "sha256"} <= set(e) <= {
            "id", "result", "sha256", "reason"}:
        raise AckRefused(f"acks[{i}]: expected id, result, sha256 and an optional reason")
    eid, result, digest, reason = e["id"], e["result"], e["sha256"], e.get("reason", "")
    if not isinstance(eid, str) or result not in RESULTS or not isinstance(digest, str) \
            or not _HEX64.fullmatch(digest) or not isinstance(reason, str):
        raise AckRefused(f"acks[{i}]: malformed entry")
    return Ack(eid, result, digest, printable(reason))


def sign_acks(acks: Sequence[Ack], signer: Signer, enterprise: str, gateway: str) -> bytes:
    """An ack message as the platform makes it (for tests and the worked example)."""
    entries = []
    for a in acks:
        entry = {"id": a.id, "result": a.result, "sha256": a.sha256}
        if a.reason:
            entry["reason"] = a.reason
        entries.append(entry)
    doc: dict[str, object] = {"v": 1, "enterprise": enterprise, "gateway": gateway,
                              "acks": entries, "alg": signer.alg, "kid": signer.key_id}
    doc["sig"] = base64.b64encode(signer.sign(canonical(doc))).decode("ascii")
    return canonical(doc)


# -- configured keys -------------------------------------------------------------------------

def load_ack_keys(entries: Iterable[str], key: str = "platform.ack_keys") -> dict[str, VerifyKey]:
    """`ack_keys` of an mqtt destination (`key` names it in errors): each entry the base64 of
    a raw 32-byte Ed25519 public key, or an absolute path to a file holding one (base64, or a
    PEM SubjectPublicKeyInfo block)."""
    keys: dict[str, VerifyKey] = {}
    for i, entry in enumerate(entries):
        raw = _key_bytes(f"{key}[{i}]", entry)
        keys[key_id_for(raw)] = VerifyKey(raw)
    return keys


def _key_bytes(where: str, entry: str) -> bytes:
    raw = _decode_key_text(entry)
    if raw is not None:
        return raw
    if not entry.startswith("/"):
        raise AckKeyError(f"{where}: expected the base64 of a 32-byte Ed25519 public key or an "
                          f"absolute path to a file holding one, got {printable(entry, 80)}")
    path = Path(entry)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise AckKeyError(f"{where}: cannot open {printable(entry, 200)}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AckKeyError(f"{where}: {printable(entry, 200)} is not a regular file")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            # Public, so reading it is fine; whoever may write it could put their own key there.
            raise AckKeyError(f"{where}: {entry} is writable by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}) — run `chmod 644 {entry}`")
        data = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace") if len(data) <= _MAX_KEY_FILE else ""
    raw = _decode_key_text(text)
    if raw is None:
        raise AckKeyError(f"{where}: {entry} holds neither a base64 Ed25519 public key nor a "
                          "PEM SubjectPublicKeyInfo block")
    return raw


def _decode_key_text(text: str) -> bytes | None:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    pem = len(lines) >= 3 and lines[0] == "-----BEGIN PUBLIC KEY-----" \
        and lines[-1] == "-----END PUBLIC KEY-----"
    body = "".join(lines[1:-1]) if pem else "".join(lines)
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    if pem:
        ok = len(der) == len(_SPKI_ED25519_PREFIX) + 32 and der.startswith(_SPKI_ED25519_PREFIX)
        return der[len(_SPKI_ED25519_PREFIX):] if ok else None
    return der if len(der) == 32 else None
