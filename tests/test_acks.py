"""Signed platform acks (issue 13): only the platform's key can make the agent forget data.

Unit tests of agent/protocol/acks.py, then the real agent against a real Mosquitto with a second
client forging acks while the platform is away, and a 50 MB ack against the agent's RSS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.protocol.acks import (
    MAX_ACK_BYTES,
    Ack,
    AckKeyError,
    AckRefused,
    load_ack_keys,
    parse_acks,
    printable,
    sign_acks,
)
from agent.protocol.signing import Ed25519Signer
from hil.broker import Mosquitto
from hil.platform_sim import PlatformSim
from tests.agent_harness import (
    ENTERPRISE,
    GATEWAY,
    REPO,
    AgentProcess,
    CountingMeter,
    public_key_of,
    wait_until,
    write_site,
)
from tests.platform_acks import ACK_KEY, PLATFORM

E, G = "91370600780790663W", "gw-01"
KEYS = load_ack_keys([ACK_KEY])
DIGEST = hashlib.sha256(b"envelope").hexdigest()


def signed(doc: dict[str, object], signer: Ed25519Signer = PLATFORM) -> bytes:
    from agent.protocol.canonical import canonical

    doc = {**doc, "alg": "ed25519", "kid": signer.key_id}
    doc["sig"] = base64.b64encode(signer.sign(canonical(doc))).decode()
    return json.dumps(doc).encode()


def test_a_signed_ack_verifies_and_anything_else_is_refused() -> None:
    good = sign_acks([Ack(f"{E}-{G}-7", "accepted", DIGEST, "")], PLATFORM, E, G)
    assert parse_acks(good, KEYS, E, G) == [Ack(f"{E}-{G}-7", "accepted", DIGEST, "")]
    # Not canonical on the wire is fine: the signature covers the canonical form.
    assert len(parse_acks(json.dumps(json.loads(good), indent=1).encode(), KEYS, E, G)) == 1
    stranger = Ed25519Signer(hashlib.sha256(b"someone on the broker").digest())
    doc = {"v": 1, "enterprise": E, "gateway": G,
           "acks": [{"id": f"{E}-{G}-7", "result": "accepted", "sha256": DIGEST}]}
    refusals = {
        "unsigned (the old format)": json.dumps({"v": 1, "acks": doc["acks"]}).encode(),
        "another key": signed(doc, stranger),
        "the key id of ours, the signature of another": good.replace(
            json.loads(good)["sig"].encode(), json.loads(signed(doc, stranger))["sig"].encode()),
        "altered after signing": good.replace(b'"accepted"', b'"rejected"'),
        "for another gateway": sign_acks([Ack(f"{E}-gw-02-7", "accepted", DIGEST, "")],
                                          PLATFORM, E, "gw-02"),
        "a float": good.replace(b'"v":1', b'"v":1.0'),
        "too large": b" " * (MAX_ACK_BYTES + 1),
        "nested 100 KB deep": b"[" * 100_000 + b"]" * 100_000,
        "nested inside a string is fine, but not JSON": b'"[[[[[[' + b"[" * 50_000,
        "no entries": signed({**doc, "acks": []}),
        "bad digest": signed({**doc, "acks": [{"id": "x", "result": "accepted", "sha256": "00"}]}),
        "unknown result": signed({**doc, "acks": [{"id": "x", "result": "ok", "sha256": DIGEST}]}),
        "not UTF-8": b"\xff\xfe",
    }
    for what, payload in refusals.items():
        with pytest.raises(AckRefused):
            parse_acks(payload, KEYS, E, G)
            pytest.fail(what)


def test_reasons_and_topics_are_logged_escaped_and_truncated() -> None:
    forged = "ok\n2026-12-06 08:00:00 CRITICAL agent: store wiped" + "x" * 500
    text = printable(forged)
    assert "\n" not in text and "\\n2026" in text and text.endswith("chars)") and len(text) < 240
    ack = sign_acks([Ack("i", "rejected", DIGEST, forged)], PLATFORM, E, G)
    assert "\n" not in parse_acks(ack, KEYS, E, G)[0].reason
    assert printable("\x1b[31mred\u202e") == "\\x1b[31mred\\u202e"


def test_ack_keys_inline_or_from_a_file(tmp_path: Path) -> None:
    pem = tmp_path / "platform-ack.pub"
    from agent.protocol.signing import public_key_pem

    pem.write_text(public_key_pem(PLATFORM.public_key_raw))
    pem.chmod(0o644)
    raw_file = tmp_path / "raw.pub"
    raw_file.write_text(ACK_KEY + "\n")
    raw_file.chmod(0o600)
    keys = load_ack_keys([str(pem), str(raw_file), ACK_KEY])
    assert list(keys) == [PLATFORM.key_id]
    pem.chmod(0o666)
    for bad in ([str(pem)], ["platform-ack.pub"], ["AAAA"], [str(tmp_path / "missing")]):
        with pytest.raises(AckKeyError, match=re.escape("platform.ack_keys[0]")):
            load_ack_keys(bad)


def test_platform_mode_refuses_to_start_without_an_ack_key(tmp_path: Path) -> None:
    cfg = write_site(tmp_path, 1883, 502, ack="platform")
    for cmd in ("check-config", "run"):
        r = subprocess.run([sys.executable, "-m", "agent", cmd, "-c", str(cfg)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 78, r.stderr
        assert "platform.ack_keys: required" in r.stderr
        assert "Traceback" not in r.stderr


def test_the_simulators_acks_verify_with_the_agents_code(tmp_path: Path) -> None:
    # hil/platform_sim.py signs from docs/protocol.md alone: the two must agree.
    sim = PlatformSim(1, {}, tmp_path / "p.db")
    keys = load_ack_keys([base64.b64encode(sim.ack_public_raw).decode()])
    wire = sim.signed_ack((E, G), [{"id": f"{E}-{G}-1", "result": "accepted", "sha256": DIGEST}])
    assert parse_acks(wire, keys, E, G) == [Ack(f"{E}-{G}-1", "accepted", DIGEST, "")]
    sim.db.close()


# -- the real agent, a real broker -------------------------------------------------------------

def platform_site(tmp: Path, broker_port: int, meter_port: int, ack_key: str, **kw: object) -> Path:
    cfg = write_site(tmp, broker_port, meter_port, ack="platform", **kw)  # type: ignore[arg-type]
    text = cfg.read_text().replace('ack = "platform"', f'ack = "platform"\nack_keys = ["{ack_key}"]')
    cfg.write_text(text)
    return cfg


class Forger:
    """A second client on the broker: reads every envelope id as it goes up, and acks it —
    and the next hundred ids — as accepted or rejected, unsigned, or signed with its own key
    over the exact bytes it saw."""

    def __init__(self, port: int) -> None:
        self.key = Ed25519Signer(hashlib.sha256(b"forger").digest())
        self.sent = 0
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="forger")
        self.c.on_connect = lambda c, *_: c.subscribe(f"energy/{ENTERPRISE}/{GATEWAY}/up/#", qos=0)
        self.c.on_subscribe = lambda *_: self.ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(5)
        self.topic = f"energy/{ENTERPRISE}/{GATEWAY}/down/ack"

    def _on_message(self, c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        seq = json.loads(msg.payload)["seq"]
        digest = hashlib.sha256(msg.payload).hexdigest()
        for s in range(seq, seq + 100):  # read-ahead: ids are guessable
            eid = f"{ENTERPRISE}-{GATEWAY}-{s}"
            result = "rejected" if s % 2 else "accepted"
            entry = {"id": eid, "result": result, "sha256": digest,
                     "reason": "x\n2026-12-06 08:00:00 CRITICAL forged line"}
            c.publish(self.topic, json.dumps({"v": 1, "acks": [entry]}), qos=1)
            c.publish(self.topic, sign_acks([Ack(eid, result, digest, "forged")], self.key,
                                            ENTERPRISE, GATEWAY), qos=1)
            self.sent += 2
        c.publish(self.topic, b"[" * 100_000, qos=1)
        self.sent += 1

    def spray(self, n: int) -> None:
        """Blind: ids 1..n, no envelope seen."""
        for s in range(1, n + 1):
            self.c.publish(self.topic, json.dumps({"v": 1, "acks": [
                {"id": f"{ENTERPRISE}-{GATEWAY}-{s}", "result": "accepted"}]}), qos=1)
            self.sent += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def outbox_seqs(cfg: Path) -> list[int]:
    if not (cfg.parent / "data" / "agent.db").exists():
        return []
    db = sqlite3.connect(f"file:{cfg.parent / 'data' / 'agent.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq")]
    except sqlite3.OperationalError:  # the schema is still being created
        return []
    finally:
        db.close()


def delivered(cfg: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{cfg.parent / 'data' / 'agent.db'}?mode=ro", uri=True)
    try:
        w = db.execute("SELECT watermark FROM delivery WHERE destination = 'mqtt'").fetchone()
        marks = db.execute("SELECT count(*) FROM delivery_marks").fetchone()[0]
        return (w[0] if w else 0), marks
    finally:
        db.close()


def test_forged_acks_change_nothing_and_the_platform_gets_everything(tmp_path: Path) -> None:
    meter = CountingMeter().start()
    with Mosquitto() as broker:
        key_file = tmp_path / "signing.key"
        from agent.protocol.signing import generate_key

        generate_key(key_file)
        kid, raw = public_key_of(key_file)
        sim = PlatformSim(broker.port, {(ENTERPRISE, GATEWAY): {kid: raw}},
                          tmp_path / "platform.db").start()
        sim.go_away()  # offline: only the forger answers
        cfg = platform_site(tmp_path, broker.port, meter.port,
                            base64.b64encode(sim.ack_public_raw).decode(), heartbeat=2)
        forger = Forger(broker.port)
        agent = AgentProcess(cfg).start()
        try:
            forger.spray(300)
            assert wait_until(lambda: len(outbox_seqs(cfg)) >= 8, 40), agent.log_text()
            time.sleep(2)
            assert forger.sent > 500
            assert delivered(cfg) == (0, 0), "a forged ack marked something delivered"
            log = agent.log_text()
            assert "CRITICAL forged" not in log.replace("\\n", "")  # never a line of its own
            assert not re.search(r"^\S* ?\S* ?CRITICAL forged", log, re.M)
            assert "rejected by the platform" not in log
            assert len(re.findall(r"mqtt ack on .* ignored", log)) <= 2, log  # once a minute
            assert "Traceback" not in log and "RecursionError" not in log
            sim.come_back()
            top = max(outbox_seqs(cfg))
            assert wait_until(lambda: sim.chain(ENTERPRISE, GATEWAY)["max_seq"] >= top
                              and not sim.chain(ENTERPRISE, GATEWAY)["missing"], 60)
            assert agent.terminate() == 0
        finally:
            forger.close()
            if agent.alive():
                agent.kill()
            meter.stop()
        chain = sim.chain(ENTERPRISE, GATEWAY)
        assert chain["intact"] and chain["envelopes"] == chain["max_seq"] >= top
        assert sim.counters.rejected == 0, sim.counters.reasons  # every envelope once, unchanged
        assert delivered(cfg)[0] >= top
        sim.stop()


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_50_mb_ack_leaves_the_agents_rss_where_it_was(tmp_path: Path) -> None:
    meter = CountingMeter().start()
    with Mosquitto() as broker:
        cfg = platform_site(tmp_path, broker.port, meter.port, ACK_KEY)
        agent = AgentProcess(cfg).start()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="big-acker")
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        try:
            assert wait_until(lambda: "mqtt connected" in agent.log_text(), 30), agent.log_text()
            time.sleep(4)  # past start-up allocations
            assert agent.proc is not None
            before = vm_rss_kib(agent.proc.pid)
            c.publish(f"energy/{ENTERPRISE}/{GATEWAY}/down/ack", b"{" * (50 * 1024 * 1024),
                      qos=1).wait_for_publish(30)
            assert wait_until(lambda: "bytes, more than the" in agent.log_text(), 30), agent.log_text()
            time.sleep(1)
            after = vm_rss_kib(agent.proc.pid)
            print(f"agent VmRSS before {before / 1024:.1f} MiB, after a 50 MB ack {after / 1024:.1f} MiB")
            assert after - before <= 5 * 1024, (before, after)
            assert agent.alive() and "Traceback" not in agent.log_text()
            assert agent.terminate() == 0
        finally:
            c.loop_stop()
            c.disconnect()
            if agent.alive():
                agent.kill()
            meter.stop()


def test_the_protocol_docs_ack_example_is_what_the_code_makes() -> None:
    from agent.protocol.signing import public_key_pem

    doc = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")

    def block(name: str) -> str:
        m = re.search(rf"<!-- ack-example:{name} -->\n```\n(.*?)\n```", doc, re.S)
        assert m, name
        return m.group(1)

    seed = hashlib.sha256(b"energy-agent platform ack example key - TEST ONLY").digest()
    key = Ed25519Signer(seed)
    assert block("seed") == seed.hex()
    assert block("public-key") == base64.b64encode(key.public_key_raw).decode()
    assert block("public-key-pem") == public_key_pem(key.public_key_raw).strip()
    assert block("kid") == key.key_id
    # It acknowledges the envelope of the protocol's worked example, by its wire bytes' hash.
    m = re.search(r"<!-- example:next-prev -->\n```\n(.*?)\n```", doc, re.S)
    assert m
    wire = sign_acks([Ack("91370600780790663W-gw-01-1", "accepted", m.group(1), "")], key,
                     "91370600780790663W", "gw-01")
    assert block("wire-bytes") == wire.decode()
    signed_doc = json.loads(wire)
    sig = signed_doc.pop("sig")
    from agent.protocol.canonical import canonical

    assert block("signed-bytes") == canonical(signed_doc).decode()
    assert block("sig") == sig
    keys = load_ack_keys([block("public-key")])
    assert parse_acks(wire, keys, "91370600780790663W", "gw-01")[0].result == "accepted"
