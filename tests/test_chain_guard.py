"""A seq is never reused, and a corrupt store gives up what it still holds (issue 13, items 2-3).

The real agent against a real Mosquitto and the platform simulator (ack mode `platform`):
kill -9 and the WAL deleted, a restored older copy of the store, a store truncated to half and
one with 64 flipped bytes. The platform must never see a resend that differs from what it got
under that id, nor a gap the gateway's signed `chain` record does not explain.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.protocol.signing import generate_key
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
)
from tests.test_acks import outbox_seqs, platform_site


@dataclass
class Site:
    cfg: Path
    db: Path
    sim: PlatformSim
    start: Callable[[], AgentProcess]


@contextmanager
def site(tmp: Path, **kw: float) -> Iterator[Site]:
    meter = CountingMeter().start()
    with Mosquitto() as broker:
        key_file = tmp / "signing.key"
        generate_key(key_file)
        kid, raw = public_key_of(key_file)
        sim = PlatformSim(broker.port, {(ENTERPRISE, GATEWAY): {kid: raw}}, tmp / "platform.db").start()
        cfg = platform_site(tmp, broker.port, meter.port, base64.b64encode(sim.ack_public_raw).decode(),
                            **{"heartbeat": 2, **kw})
        procs: list[AgentProcess] = []

        def start() -> AgentProcess:
            procs.append(AgentProcess(cfg).start())
            return procs[-1]
        try:
            yield Site(cfg, tmp / "data" / "agent.db", sim, start)
        finally:
            for p in procs:
                if p.alive():
                    p.kill()
            sim.stop()
            meter.stop()


def payloads(db: Path) -> dict[int, bytes]:
    conn = sqlite3.connect(db)
    try:
        return {s: bytes(p) for s, p in conn.execute("SELECT seq, payload FROM payloads")}
    finally:
        conn.close()


def drop_wal(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def settle(s: Site, agent: AgentProcess) -> dict[str, object]:
    """Let the platform catch up with everything the agent holds; stop it; the chain."""
    assert wait_until(lambda: _caught_up(s), 60), agent.log_text()
    assert agent.terminate() == 0, agent.log_text()
    assert "Traceback" not in agent.log_text()
    reasons = s.sim.counters.reasons
    assert not [r for r in reasons if "differs" in r], reasons  # no seq reused
    chain = s.sim.chain(ENTERPRISE, GATEWAY)
    assert not chain["missing"] and not chain["broken"], chain
    return chain


def _caught_up(s: Site) -> bool:
    seqs = outbox_seqs(s.cfg)
    c = s.sim.chain(ENTERPRISE, GATEWAY)
    return bool(seqs) and c["max_seq"] >= max(seqs) and not c["missing"]


def status(cfg: Path) -> dict[str, object]:
    r = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(cfg), "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_kill_9_with_the_wal_deleted_reuses_no_seq(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        agent = s.start()
        assert wait_until(lambda: len(outbox_seqs(s.cfg)) >= 6, 40), agent.log_text()
        agent.kill()
        wal = s.db.with_name(s.db.name + "-wal")
        assert wal.exists() and wal.stat().st_size > 0  # recent commits live only there
        drop_wal(s.db)
        agent = s.start()
        assert wait_until(lambda: "chain went backwards" in agent.log_text(), 30), agent.log_text()
        time.sleep(3)  # new envelopes above the mark
        settle(s, agent)
        assert _chain_records(s.sim) == 1  # the platform got the signed account of it
        st = status(s.cfg)
        assert st["chain_reset"]["reason"] == "store-behind"  # type: ignore[index]
        assert any("chain reset" in w for w in st["warnings"])  # type: ignore[attr-defined]


def test_a_restored_older_copy_of_the_store_reuses_no_seq(tmp_path: Path) -> None:
    with site(tmp_path) as s:
        agent = s.start()
        assert wait_until(lambda: len(outbox_seqs(s.cfg)) >= 3, 40), agent.log_text()
        backup = tmp_path / "backup.db"
        _backup(s.db, backup)  # online and consistent, like `sqlite3 agent.db ".backup …"`
        old = max(outbox_seqs(s.cfg))
        assert wait_until(lambda: max(outbox_seqs(s.cfg)) >= old + 6, 40)
        agent.kill()
        drop_wal(s.db)
        shutil.copyfile(backup, s.db)  # docs/operations.md §5, restored
        agent = s.start()
        assert wait_until(lambda: "chain went backwards" in agent.log_text(), 30), agent.log_text()
        time.sleep(3)
        settle(s, agent)
        assert _chain_records(s.sim) == 1


def _chain_records(sim: PlatformSim) -> int:
    with sim._lock:
        return int(sim.db.execute("SELECT count(*) FROM envelope WHERE type = 'chain'").fetchone()[0])


def _backup(src: Path, dst: Path) -> None:
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    a.backup(b)
    a.close()
    b.close()


def truncate_half(db: Path) -> None:
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)


def flip_64_bytes(db: Path) -> None:
    """Invert the 64 bytes at the start of the page holding envelope seq 20: its page header
    and cell pointers, so SQLite finds the file corrupt and what that page held is gone."""
    data = db.read_bytes()
    at = data.find(b'"seq":20,')
    assert at > 0
    page = 4096
    start = (at // page) * page
    with open(db, "r+b") as f:
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data[start:start + 64]))


@pytest.mark.parametrize("damage", [truncate_half, flip_64_bytes], ids=["truncated", "flipped"])
def test_a_corrupt_store_sends_every_readable_unsent_envelope(tmp_path: Path,
                                                              damage: Callable[[Path], None]) -> None:
    # Enough envelopes that the first half of the file holds some of them (the schema alone
    # takes 27 pages, and a table's leaves come after its root).
    with site(tmp_path, poll=0.1, seal=0.1) as s:
        s.sim.go_away()  # nothing is delivered: every envelope is unsent
        agent = s.start()
        assert wait_until(lambda: len(outbox_seqs(s.cfg)) >= 150, 90), agent.log_text()
        agent.kill()
        before = payloads(s.db)
        conn = sqlite3.connect(s.db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        drop_wal(s.db)
        damage(s.db)
        agent = s.start()
        assert wait_until(lambda: "corrupt" in agent.log_text() and "chain went backwards"
                          in agent.log_text(), 30), agent.log_text()
        st = status(s.cfg)
        reset = st["chain_reset"]
        assert reset["reason"] == "store-salvaged", reset  # type: ignore[index]
        lost = {n for a, b in reset["lost"] for n in range(a, b + 1)}  # type: ignore[index]
        # Every seq is either salvaged or reported lost; nothing falls between.
        assert reset["salvaged"] + len(lost) == len(before) == max(before), reset  # type: ignore[index]
        assert reset["salvaged"] > 0 and lost, reset  # type: ignore[index]
        if damage is flip_64_bytes:
            assert 20 in lost, reset  # type: ignore[index]
        s.sim.come_back()
        # The next heartbeat carries the same account (status body `chain_reset`).
        assert wait_until(lambda: _told(s.sim), 30), agent.log_text()
        assert _told(s.sim)[-1]["lost"] == reset["lost"]  # type: ignore[index]
        settle(s, agent)
        got = _wires(s.sim)
        readable = {seq for seq in before if seq not in lost}
        assert len(readable) == reset["salvaged"]  # type: ignore[index]
        for seq in readable:
            assert got.get(seq) == before[seq], f"seq {seq} not received byte-identical"
        assert lost <= set(before) | set(range(1, max(before) + 1))
        print(f"{damage.__name__}: {len(before)} envelopes, {len(readable)} salvaged, lost {reset['lost']}")  # type: ignore[index]


def _wires(sim: PlatformSim) -> dict[int, bytes]:
    with sim._lock:
        return {s: bytes(w) for s, w in sim.db.execute("SELECT seq, wire FROM envelope")}


def _told(sim: PlatformSim) -> list[dict[str, object]]:
    with sim._lock:
        beats = [json.loads(w)["body"] for (w,) in sim.db.execute(
            "SELECT wire FROM envelope WHERE type = 'status' ORDER BY seq")]
    return [b["chain_reset"] for b in beats if "chain_reset" in b]
