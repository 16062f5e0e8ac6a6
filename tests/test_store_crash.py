"""kill -9 at random moments never loses a committed reading or envelope, nor breaks the chain."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from buffer.store import Store

REPO = Path(__file__).resolve().parents[1]
BATCH = 200  # readings per transaction
KILLS = 10

# The writer: one add_readings per batch (value = batch number), an envelope every 3 batches
# sealed the way the sealer does it (seq and prev from chain_head, cursor in the same commit).
# Each line is printed only after its commit returned.
WRITER = f"""
import json, sys
from buffer.store import EnvelopeMeta, Store
from drivers.base import Reading
from tests.store_helpers import enqueue
store = Store(sys.argv[1])
last = store.readings.readings_after(store.conn.execute("SELECT coalesce(max(id), 0) FROM polls").fetchone()[0] - 1, 1)
batch = int(last[-1][1].value) if last else 0
print("ready", flush=True)
while True:
    batch += 1
    rows = [Reading("m%d" % (i % 7), "p%d" % (i % 5), batch * 1000 + i, float(batch))
            for i in range({BATCH})]
    store.readings.add_readings(rows)
    print("B", batch, flush=True)
    if batch % 3 == 0:
        seq, prev = store.outbox.chain_head()
        last = store.readings.readings_after(store.state.cursor("sealed_rowid"), 10**9)[-1][0]
        payload = json.dumps({{"seq": seq, "prev": prev, "cursor": last,
                              "pad": "x" * (seq % 4000)}}).encode()
        enqueue(store, payload, EnvelopeMeta(seq, "E-G-%d" % seq, "readings", "t", seq),
                ("sealed_rowid", last))
        print("E", seq, flush=True)
"""


def _run_and_kill(db: Path, rng: random.Random) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    lines: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.endswith("\n"):  # a line cut short by the kill reports nothing
                lines.append(line.strip())
            ready.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert ready.wait(30), proc.stderr.read() if proc.poll() is not None else "writer silent"
    time.sleep(rng.uniform(0.05, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t.join(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return lines


def test_sigkill_loses_nothing_committed(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    rng = random.Random(int(os.environ.get("CRASH_SEED", time.time_ns() % 10**6)))
    batches: set[int] = set()
    seqs: set[int] = set()
    for _ in range(KILLS):
        for line in _run_and_kill(db, rng):
            kind, _, n = line.partition(" ")
            if kind == "B":
                batches.add(int(n))
            elif kind == "E":
                seqs.add(int(n))

        store = Store(db)
        try:
            assert "corrupt_db_moved" not in store.state.counters()
            per_batch = Counter(int(r.value) for _, r in store.readings.readings_after(0, 10**9))
            # every reported batch is there, and every batch is whole (one transaction)
            assert batches <= set(per_batch)
            assert set(per_batch.values()) == {BATCH}
            next_seq, head = store.outbox.chain_head()
            rows = store.outbox.pending("mqtt", 10**6)
            assert [r.seq for r in rows] == list(range(1, next_seq))
            assert seqs <= {r.seq for r in rows}
            prev = Store.ZERO_HASH
            for r in rows:
                assert json.loads(r.payload)["prev"] == prev
                prev = hashlib.sha256(r.payload).hexdigest()
            assert head == prev
            # the cursor moved with its envelope, in the same commit
            cursors = [json.loads(r.payload)["cursor"] for r in rows]
            assert cursors == sorted(set(cursors))
            assert store.state.cursor("sealed_rowid") == (cursors[-1] if cursors else 0)
        finally:
            store.close()
    assert len(batches) > KILLS  # the writer really got going between kills
    assert seqs
