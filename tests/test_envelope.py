"""Envelopes built by agent.protocol.envelope, checked by the independent tests/verifier.py, and the
worked example in docs/protocol.md regenerated and compared block by block.

`python tests/test_envelope.py` prints the worked-example blocks (to refresh the doc after an
intended change of the format).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `python tests/test_envelope.py` finds agent/

from agent.protocol.canonical import canonical  # noqa: E402
from agent.protocol.envelope import (  # noqa: E402
    GENESIS_PREV,
    ack_topic,
    build_envelope,
    envelope_id,
    format_value,
    topic_for,
    will_topic,
)
from agent.protocol.signing import (  # noqa: E402
    Ed25519Signer,
    key_id_for,
    public_key_base64,
    public_key_pem,
)
from tests.verifier import ChainVerifier, VerificationError, sha256_hex  # noqa: E402

E, G = "91370600780790663W", "gw-01"
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 22, 10, 15, 0, tzinfo=CST)
DOC = ROOT / "docs" / "protocol.md"
TEST_KEY = ROOT / "tests" / "data" / "protocol-example-TEST-ONLY.pem"


def new_signer(key_id: str | None = None) -> Ed25519Signer:
    return Ed25519Signer.from_private_key(Ed25519PrivateKey.generate(), key_id)


def samples(n: int, start: int = 0) -> dict[str, Any]:
    ts = int(T0.timestamp() * 1000)
    return {"samples": [
        ["main-incomer", "import_active_energy", ts + 1000 * i, format_value(12345.67 + i / 8, 2), 0]
        for i in range(start, start + n)
    ]}


def build_chain(signer: Ed25519Signer, n: int, **overrides: Any) -> list[bytes]:
    out: list[bytes] = []
    prev = GENESIS_PREV
    for seq in range(1, n + 1):
        fields: dict[str, Any] = dict(
            seq=seq, prev=prev, type="readings", enterprise=E, gateway=G,
            created=T0 + timedelta(minutes=seq), body=samples(3, start=3 * seq), signer=signer,
        )
        fields.update(overrides)
        payload = build_envelope(**fields)
        out.append(payload)
        prev = sha256_hex(payload)
    return out


def verifier_for(*signers: Ed25519Signer, **kw: Any) -> ChainVerifier:
    return ChainVerifier({s.key_id: s.public_key_raw for s in signers}, E, G, **kw)


# --- the chain, checked by the independent verifier -------------------------------------------


def test_chain_of_50_verifies_in_order() -> None:
    signer = new_signer()
    chain = build_chain(signer, 50)
    v = verifier_for(signer, strict_order=True)
    for seq, payload in enumerate(chain, 1):
        env = v.accept(payload)
        assert env["seq"] == seq and env["id"] == f"{E}-{G}-{seq}"
        assert not v.last_duplicate
    assert v.max_seq == 50 and v.gaps() == [] and v.accepted == 50 and v.duplicates == 0
    # The wire bytes are exactly RFC 8785 of what they parse to, per the oracle.
    assert all(rfc8785.dumps(json.loads(p)) == p for p in chain)


def test_resend_of_same_bytes_counts_as_duplicate() -> None:
    signer = new_signer()
    chain = build_chain(signer, 3)
    v = verifier_for(signer)
    for p in chain:
        v.accept(p)
    v.accept(chain[1])
    assert v.last_duplicate and v.duplicates == 1 and v.accepted == 3
    v.accept(chain[2])
    assert v.duplicates == 2


def test_reused_seq_with_other_bytes_is_a_conflict() -> None:
    signer = new_signer()
    a = build_chain(signer, 2)
    b = build_chain(signer, 2, body=samples(1))
    v = verifier_for(signer)
    v.accept(a[0])
    v.accept(a[1])
    with pytest.raises(VerificationError, match="conflict"):
        v.accept(b[1])


def test_every_single_byte_change_is_rejected() -> None:
    signer = new_signer()
    first, second = build_chain(signer, 2)
    for i in range(len(second)):
        for flip in (0x01, 0x20):
            tampered = bytearray(second)
            tampered[i] ^= flip
            v = verifier_for(signer)
            v.accept(first)  # so the prev link is checked too
            with pytest.raises(VerificationError):
                v.accept(bytes(tampered))
    verifier_for(signer).accept(first)


def test_edited_and_recanonicalised_envelope_fails_signature() -> None:
    signer = new_signer()
    chain = build_chain(signer, 3)
    env = json.loads(chain[2])
    env["body"]["samples"][0][3] = "99999.99"
    v = verifier_for(signer)
    with pytest.raises(VerificationError, match="bad signature"):
        v.accept(rfc8785.dumps(env))


def test_changing_seq_is_rejected() -> None:
    signer = new_signer()
    chain = build_chain(signer, 3)
    for edit in ({"seq": 4}, {"seq": 4, "id": f"{E}-{G}-4"}):
        env = json.loads(chain[2]) | edit
        with pytest.raises(VerificationError, match="bad signature"):
            verifier_for(signer).accept(rfc8785.dumps(env))


def test_reordered_chain_breaks_the_links() -> None:
    signer = new_signer()
    chain = build_chain(signer, 4)
    # Envelopes 2 and 3 signed in the wrong order: 3 links to 1, and 2 links to 3.
    two = build_envelope(seq=2, prev=sha256_hex(chain[0]), type="readings", enterprise=E,
                         gateway=G, created=T0, body=samples(1), signer=signer)
    three_after_one = build_envelope(seq=3, prev=sha256_hex(chain[0]), type="readings",
                                     enterprise=E, gateway=G, created=T0, body=samples(1),
                                     signer=signer)
    v = verifier_for(signer)
    v.accept(chain[0])
    v.accept(two)
    with pytest.raises(VerificationError, match="broken chain: prev of seq 3"):
        v.accept(three_after_one)
    # A successor that arrived first is checked when its predecessor comes.
    v = verifier_for(signer)
    v.accept(chain[0])
    v.accept(chain[2])
    with pytest.raises(VerificationError, match="broken chain: prev of seq 3 is not the hash of seq 2"):
        v.accept(two)


def test_out_of_order_delivery_is_a_gap_unless_strict() -> None:
    signer = new_signer()
    chain = build_chain(signer, 5)
    v = verifier_for(signer)
    for i in (0, 1, 4, 2):
        v.accept(chain[i])
    assert v.gaps() == [4] and v.max_seq == 5
    v.accept(chain[3])
    assert v.gaps() == []
    strict = verifier_for(signer, strict_order=True)
    strict.accept(chain[0])
    with pytest.raises(VerificationError, match="out of order: expected seq 2, got 3"):
        strict.accept(chain[2])


def test_wrong_or_unknown_key_is_rejected() -> None:
    real, other = new_signer(), new_signer()
    payload = build_chain(real, 1)[0]
    with pytest.raises(VerificationError, match="unknown kid"):
        verifier_for(other).accept(payload)
    # An impostor that claims the real key id.
    forged = build_chain(new_signer(key_id=real.key_id), 1)[0]
    with pytest.raises(VerificationError, match="bad signature"):
        verifier_for(real).accept(forged)


def test_key_change_keeps_the_chain() -> None:
    old, new = new_signer(), new_signer()
    first = build_chain(old, 1)[0]
    second = build_envelope(seq=2, prev=sha256_hex(first), type="status", enterprise=E,
                            gateway=G, created=T0, body={"backlog": 0}, signer=new)
    v = verifier_for(old, new, strict_order=True)
    v.accept(first)
    assert v.accept(second)["kid"] == new.key_id


def test_topic_must_match_the_envelope() -> None:
    signer = new_signer()
    payload = build_chain(signer, 1)[0]
    verifier_for(signer).accept(payload, topic=topic_for("energy", E, G, "readings"))
    for wrong in (topic_for("energy", E, G, "status"), topic_for("energy", E, "gw-02", "readings"),
                  f"/{E}/{G}/up/readings"[1:]):
        with pytest.raises(VerificationError, match="does not match the envelope"):
            verifier_for(signer).accept(payload, topic=wrong)


def test_envelope_from_another_gateway_is_rejected() -> None:
    signer = new_signer()
    payload = build_chain(signer, 1, gateway="gw-02")[0]
    with pytest.raises(VerificationError, match="expected 91370600780790663W/gw-01"):
        verifier_for(signer).accept(payload)


def test_non_canonical_bytes_are_rejected_even_with_valid_signature() -> None:
    signer = new_signer()
    payload = build_chain(signer, 1)[0]
    pretty = json.dumps(json.loads(payload), indent=1, ensure_ascii=False).encode()
    with pytest.raises(VerificationError, match="not the canonical form"):
        verifier_for(signer).accept(pretty)


# --- build_envelope itself ---------------------------------------------------------------------


def test_envelope_fields_and_signature() -> None:
    signer = new_signer()
    payload = build_chain(signer, 1)[0]
    env = json.loads(payload)
    assert list(env) == sorted(env)
    assert env == env | {
        "v": 1, "id": f"{E}-{G}-1", "seq": 1, "type": "readings", "enterprise": E, "gateway": G,
        "created": "2026-11-22T10:16:00+08:00", "prev": GENESIS_PREV, "alg": "ed25519",
        "kid": signer.key_id,
    }
    unsigned = canonical({k: v for k, v in env.items() if k != "sig"})
    Ed25519PublicKey.from_public_bytes(signer.public_key_raw).verify(
        base64.b64decode(env["sig"]), unsigned
    )


def test_created_is_seconds_with_offset() -> None:
    signer = new_signer()
    odd = datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC)
    payload = build_chain(signer, 1, created=odd)[0]
    assert json.loads(payload)["created"] == "2026-01-02T03:04:05+00:00"
    with pytest.raises(ValueError, match="no time zone"):
        build_chain(signer, 1, created=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"seq": 0}, ValueError, "seq: expected an integer"),
        ({"seq": True}, ValueError, "seq: expected an integer"),
        ({"prev": "A" * 64}, ValueError, "prev: expected 64 lowercase hex"),
        ({"prev": "a" * 64}, ValueError, "seq 1 starts the chain"),
        ({"type": "bogus"}, ValueError, "type: expected one of"),
        ({"body": {"samples": [["m", "p", 1, 1.5, 0]]}}, TypeError,
         r"body\.samples\[0\]\[3\]: floats are not allowed"),
        ({"body": {"ok": None}}, TypeError, r"body\.ok: null"),
    ],
)
def test_build_envelope_refuses(overrides: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        build_chain(new_signer(), 1, **overrides)


def test_pre_encoded_body_gives_the_same_envelope() -> None:
    signer = new_signer()  # Ed25519 signatures are deterministic: same key and bytes, same sig
    body = samples(4)
    common: dict[str, Any] = dict(seq=2, prev="a" * 64, type="readings", enterprise=E, gateway=G,
                                  created=T0, signer=signer)
    plain = build_envelope(body=body, **common)
    assert build_envelope(body_json=canonical(body), **common) == plain
    verifier_for(signer).accept(build_envelope(seq=1, prev=GENESIS_PREV, type="readings", enterprise=E,
                                               gateway=G, created=T0, signer=signer,
                                               body_json=canonical(body)))
    for wrong in ({"body": body, "body_json": canonical(body)}, {}, {"body_json": b"[1]"}):
        with pytest.raises(TypeError, match="body"):
            build_envelope(**common, **wrong)


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (12345.669921875, 2, "12345.67"),  # float32 of 12345.67
        (None, 2, ""),
        (float("nan"), 2, ""),
        (float("-inf"), 2, ""),
        (-0.001, 2, "0.00"),
        (-0.0, 3, "0.000"),
        (0.125, 2, "0.12"),  # exact tie: half to even
        (0.375, 2, "0.38"),
        (2.675, 2, "2.67"),  # binary value is just below the tie
        (1e22, 1, "10000000000000000000000.0"),
        (1.5e-7, 3, "0.000"),
        (12.5, 0, "12"),
        (7, 2, "7.00"),
        (-40, 0, "-40"),
        (123.456, 9, "123.456000000"),
    ],
)
def test_format_value(value: float | None, decimals: int, expected: str) -> None:
    assert format_value(value, decimals) == expected


def test_format_value_agrees_with_format_spec() -> None:
    for i in range(-2000, 2000):
        x = i / 16 + i * 1e-5
        expected = format(x, ".3f")
        if float(expected) == 0:
            expected = expected.lstrip("-")
        assert format_value(x, 3) == expected


def test_ids_topics_and_hash() -> None:
    assert envelope_id(E, G, 42) == "91370600780790663W-gw-01-42"
    assert topic_for("energy", E, G, "readings") == "energy/91370600780790663W/gw-01/up/readings"
    assert ack_topic("energy", E, G) == "energy/91370600780790663W/gw-01/down/ack"
    assert will_topic("a/b", E, G) == "a/b/91370600780790663W/gw-01/will"
    with pytest.raises(ValueError, match="cannot be an MQTT topic level"):
        topic_for("energy", E, "gw/+", "readings")


def test_key_id_is_sha256_prefix_of_raw_public_key() -> None:
    raw = bytes(range(32))
    assert key_id_for(raw) == hashlib.sha256(raw).hexdigest()[:16]
    with pytest.raises(ValueError):
        key_id_for(b"short")


# --- the worked example in docs/protocol.md ----------------------------------------------------


def worked_example() -> dict[str, str]:
    """Every checked block of docs/protocol.md, regenerated with the agent's code."""
    signer = Ed25519Signer.from_pem(TEST_KEY.read_bytes())
    ts = int(datetime(2026, 11, 22, 10, 14, 0, tzinfo=CST).timestamp() * 1000)
    body = {"samples": [
        ["main-incomer", "import_active_energy", ts, format_value(12345.669921875, 2), 0],
        ["main-incomer", "active_power", ts, format_value(-3.2504, 3), 0],
        ["boiler-gas", "volume", ts + 412, format_value(None, 2), 1],
    ]}
    wire = build_envelope(seq=1, prev=GENESIS_PREV, type="readings", enterprise=E, gateway=G,
                          created=T0, body=body, signer=signer)
    env = json.loads(wire)
    signed = canonical({k: v for k, v in env.items() if k != "sig"})
    return {
        "private-seed": hashlib.sha256(b"energy-agent protocol example key - TEST ONLY").hexdigest(),
        "public-key": public_key_base64(signer.public_key_raw),
        "public-key-pem": public_key_pem(signer.public_key_raw).strip(),
        "kid": signer.key_id,
        "signed-bytes": signed.decode("utf-8"),
        "sig": env["sig"],
        "wire-bytes": wire.decode("utf-8"),
        "next-prev": sha256_hex(wire),
    }


def doc_blocks() -> dict[str, str]:
    # Split on "\n" only: a U+2028 in a block must not count as a line break.
    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- example:([a-z-]+) -->\n```[a-z]*\n(.*?)\n```", re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(text)}


def test_worked_example_in_protocol_doc_is_current() -> None:
    blocks = doc_blocks()
    for name, expected in worked_example().items():
        assert blocks.get(name) == expected, f"docs/protocol.md block {name!r} is out of date"


def test_worked_example_verifies_independently() -> None:
    blocks = doc_blocks()
    raw = base64.b64decode(blocks["public-key"])
    v = ChainVerifier({blocks["kid"]: raw}, E, G)
    env = v.accept(blocks["wire-bytes"].encode("utf-8"))
    assert rfc8785.dumps({k: x for k, x in env.items() if k != "sig"}).decode() == blocks["signed-bytes"]
    assert hashlib.sha256(blocks["wire-bytes"].encode()).hexdigest() == blocks["next-prev"]
    # The key file really is the published seed (anyone can re-derive it).
    assert Ed25519PrivateKey.from_private_bytes(bytes.fromhex(blocks["private-seed"])).public_key(
    ).public_bytes_raw() == raw


def test_canonical_example_in_protocol_doc() -> None:
    blocks = doc_blocks()
    obj = json.loads(blocks["canonical-input"])
    assert canonical(obj).decode("utf-8") == blocks["canonical-output"]
    assert rfc8785.dumps(obj).decode("utf-8") == blocks["canonical-output"]


if __name__ == "__main__":
    for name, text in worked_example().items():
        print(f"<!-- example:{name} -->\n```\n{text}\n```\n")
