"""A platform ack key for tests (TEST ONLY) and acks signed with it, the way a platform does."""

from __future__ import annotations

import base64
import hashlib

from agent.protocol.acks import Ack, sign_acks
from agent.protocol.signing import Ed25519Signer

PLATFORM = Ed25519Signer(hashlib.sha256(b"energy-agent tests: platform ack key").digest())
ACK_KEY = base64.b64encode(PLATFORM.public_key_raw).decode()


def ack_for(payload: bytes, eid: str, result: str = "accepted", reason: str = "",
            enterprise: str = "91370600780790663W", gateway: str = "gw-01",
            others: tuple[Ack, ...] = ()) -> bytes:
    """A signed ack naming `eid` and the SHA-256 of `payload` (plus `others`)."""
    ack = Ack(eid, result, hashlib.sha256(payload).hexdigest(), reason)
    return sign_acks([*others, ack], PLATFORM, enterprise, gateway)
