"""Sealer.seal takes its seq inside the store's write transaction: two sealers, even in two
processes on one file, never fork the chain or trip over a stale seq."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from buffer.store import EnvelopeMeta, Store
from tests.store_helpers import enqueue
from tests.test_reports import CONFIG
from tests.verifier import ChainVerifier

ROOT = Path(__file__).resolve().parent.parent
ENTERPRISE, GATEWAY = "91370600780790663W", "gw-01"

# The other process: `energy-agent enter`'s code path (seal_manual), in a loop until its time
# is up. It prints "ready" once its store is open, then how many it sealed. Both sides pause
# up to a millisecond between seals: without it the side that just committed takes the write
# lock straight back while the other sleeps in SQLite's busy handler, and they barely interleave.
CHILD = """
import random, sys, time
from agent.config import load_config
from agent.accounting.manual import manual_body, seal_manual
from agent.protocol.sealer import Sealer
from agent.protocol.signing import load_signer
from buffer.store import Store

cfg = load_config(sys.argv[1])
store = Store(cfg.agent.data_dir + "/agent.db")
sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file))
print("ready", flush=True)
made, until = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:
    body, period = manual_body("00-00-0000-010104-10", f"{made}.5", "t", tz=cfg.tz,
                               entered_ms=int(time.time() * 1000), month="2026-11")
    seal_manual(store, sealer, body, period)
    made += 1
    time.sleep(random.random() / 1000)
store.close()
print(made, flush=True)
"""


@pytest.fixture
def site(tmp_path: Path):
    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path))
    cfg = load_config(tmp_path / "agent.toml")
    public, kid = generate_key(cfg.signing.key_file)
    store = Store(tmp_path / "agent.db")
    yield cfg, store, Sealer(cfg, store, load_signer(cfg.signing.key_file)), {kid: public}
    store.close()


def chain(store: Store) -> list[tuple[int, str, bytes]]:
    return [(int(s), str(t), bytes(p)) for s, t, p in store.conn.execute(
        "SELECT o.seq, o.type, p.payload FROM outbox o JOIN payloads p ON p.seq = o.seq"
        " ORDER BY o.seq")]


def test_two_processes_sealing_at_once_keep_one_chain(site, tmp_path: Path) -> None:
    _, store, sealer, keys = site
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "agent.toml"), "3"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        ours = 0
        deadline = time.monotonic() + 30
        while child.poll() is None and time.monotonic() < deadline:
            ours += 1
            sealer.seal("readings", {"samples": [["main", "kwh", ours, "1.00", 0]]},
                        cursor=("sealed_rowid", ours))
            time.sleep(random.random() / 1000)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    theirs = int(out.split()[-1])

    rows = chain(store)
    assert [seq for seq, _, _ in rows] == list(range(1, ours + theirs + 1))
    types = [t for _, t, _ in rows]
    assert types.count("readings") == ours and types.count("manual") == theirs
    # Both really sealed at the same time: the two kinds interleave along the chain.
    switches = sum(a != b for a, b in itertools.pairwise(types))
    assert ours > 20 and theirs > 20 and switches > 10, (ours, theirs, switches)

    # prev = SHA-256 of the previous payload, signatures good, ids and seqs as the wire says.
    verifier = ChainVerifier(keys, ENTERPRISE, GATEWAY, strict_order=True)
    prev = Store.ZERO_HASH
    for seq, _, payload in rows:
        env = verifier.accept(payload)
        assert env["seq"] == seq and env["prev"] == prev
        prev = hashlib.sha256(payload).hexdigest()
    assert store.outbox.chain_head() == (ours + theirs + 1, prev)
    assert store.state.cursor("sealed_rowid") == ours  # our cursor moved with our last envelope


def test_seal_follows_an_envelope_another_connection_appended(site) -> None:
    _, store, sealer, _ = site
    first = sealer.seal("manual", {"items": []}, period="2026-11")
    other = Store(store.path)
    try:
        seq, _ = other.outbox.chain_head()
        enqueue(other, b'{"x":1}', EnvelopeMeta(seq, "E-G-2", "status", "t", 0))
    finally:
        other.close()
    # The head this connection might have cached is stale; seal must not care.
    third = sealer.seal("manual", {"items": []}, period="2026-11")
    assert (first, seq, third) == (1, 2, 3)
    payload = chain(store)[2][2]
    assert json.loads(payload)["prev"] == hashlib.sha256(b'{"x":1}').hexdigest()


def test_a_failing_build_writes_nothing(site) -> None:
    _, store, _, _ = site
    head = store.outbox.chain_head()

    def build(seq: int, prev: str) -> tuple[bytes, EnvelopeMeta]:
        raise RuntimeError("signer gone")

    with pytest.raises(RuntimeError, match="signer gone"):
        store.outbox.enqueue_built(build, ("sealed_rowid", 5))

    def wrong_seq(seq: int, prev: str) -> tuple[bytes, EnvelopeMeta]:
        return b"p", EnvelopeMeta(seq + 1, "E-G-x", "manual", "t", 0)

    with pytest.raises(ValueError, match="seq"):
        store.outbox.enqueue_built(wrong_seq)
    assert store.outbox.chain_head() == head and chain(store) == []
    assert store.state.cursor("sealed_rowid") == 0
