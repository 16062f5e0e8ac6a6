"""Store throughput and footprint: readings/s through add_readings, bytes per reading (one
stored row per meter poll since schema v2), and pending()/backlog() latency with a large outbox.

Run from the repo root: PYTHONPATH=. .venv/bin/python bench/store_write.py [--readings N] [--envelopes N]
Results recorded at the bottom of this file.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from buffer.names import MQTT
from buffer.store import EnvelopeMeta, Store
from drivers.base import Reading

T0 = 1_763_700_000_000


def bench_readings(store: Store, n: int, batch: int, points: int) -> None:
    """n readings of `points` series (meters of 8 points), `batch` readings per commit."""
    raw0 = raw_bytes(store)
    names = [(f"meter{s // 8}", f"p{s % 8}") for s in range(points)]  # shared, as the drivers' are
    batches = [[Reading(*names[i % points], T0 + (k + i) // points * 60_000, 12345.67 + (k + i) * 0.01)
                for i in range(batch)] for k in range(0, n, batch)]
    start = time.perf_counter()
    for rows in batches:
        store.readings.add_readings(rows)
    dt = time.perf_counter() - start
    done = len(batches) * batch
    per = (raw_bytes(store) - raw0) / done
    print(f"add_readings: {done} readings in batches of {batch}: {done / dt:,.0f} readings/s,"
          f" {dt / (done / batch) * 1000:.2f} ms per commit, {per:.1f} bytes/reading"
          " (poll rows of 8 points + poll_index)")


def raw_bytes(store: Store) -> int:
    """Pages of the tables that hold readings and their indexes (dbstat), after a checkpoint."""
    store.checkpoint()
    return int(store.conn.execute(
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN ('polls', 'poll_index', 'layouts')"
        " OR name LIKE 'idx_layouts%'").fetchone()[0])


def bench_outbox(store: Store, n: int, size: int) -> None:
    t = time.perf_counter()
    for i in range(20):
        payload = b"z" * size + bytes([i])
        store.outbox.enqueue_built(
            lambda seq, _prev, payload=payload: (payload, EnvelopeMeta(seq, f"E-G-{seq}", "readings", "t", T0)))
    print(f"enqueue: {(time.perf_counter() - t) / 20 * 1000:.2f} ms each (one commit)")
    payload = b"x" * size
    digest = hashlib.sha256(payload).digest()
    start = time.perf_counter()
    seq0, _ = store.outbox.chain_head()
    # One transaction for setup speed; enqueue_built() itself is one commit per envelope.
    with store.transaction() as c:
        for seq in range(seq0, seq0 + n):
            c.execute("INSERT INTO outbox VALUES (?, ?, 'readings', 't', ?, NULL, ?)",
                      (seq, f"E-G-{seq}", T0 + seq, digest))
            c.execute("INSERT INTO payloads VALUES (?, ?)", (seq, payload))
        c.execute("UPDATE chain SET next_seq = ?", (seq0 + n,))
    print(f"outbox setup: {n} envelopes of {size} bytes in {time.perf_counter() - start:.1f} s")
    store.checkpoint()
    store.outbox.mark_delivered(MQTT, range(1, n // 2))
    for label, fn in [
        ("pending(limit=100) at the watermark", lambda: store.outbox.pending(MQTT, 100)),
        ("pending(limit=100, after_seq=n-200)", lambda: store.outbox.pending(MQTT, 100, n - 200)),
        ("backlog()", lambda: store.outbox.backlog(MQTT)),
        ("mark_delivered(100 in order)", lambda: store.outbox.mark_delivered(
            MQTT, [r.seq for r in store.outbox.pending(MQTT, 100)])),
        ("mark_delivered(1 out of order)", lambda: store.outbox.mark_delivered(MQTT, [n - 5])),
    ]:
        t = time.perf_counter()
        fn()
        print(f"{label}: {(time.perf_counter() - t) * 1000:.2f} ms with {n} envelopes")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--envelopes", type=int, default=500_000)
    ap.add_argument("--size", type=int, default=600)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "bench.db")
        bench_readings(store, a.readings, a.batch, a.points)
        bench_readings(store, a.batch * 200, 100, a.points)
        bench_outbox(store, a.envelopes, a.size)
        print(f"file: {store.size_bytes() / 1e6:.1f} MB")
        store.close()


if __name__ == "__main__":
    main()

# Recorded 2026 on the shared dev VM (2 vCPU, virtio disk, SQLite 3.40.1, WAL + synchronous=FULL),
# store schema v2 (one row per meter poll), 200 series as 25 meters of 8 points, values with
# 2 decimals, default arguments (schema v1, one row per reading, in brackets):
#   add_readings: 500000 readings in batches of 1000: 1,161,660-1,286,779 readings/s (148,180),
#                 0.78-0.86 ms per commit (6.75), 13.0 bytes/reading (47.4): poll rows + poll_index
#   add_readings: 200000 readings in batches of 100: 319,438-390,457 readings/s (58,704),
#                 0.26-0.31 ms per commit (1.70), 13.4 bytes/reading
#   enqueue: 0.34-0.38 ms each (one commit; eMMC/SD fsyncs cost far more)
#   with 500000 envelopes in the outbox:
#     pending(limit=100) at the watermark 0.66 ms; pending(after_seq=n-200) 0.38 ms
#     backlog() 8.1 ms; mark_delivered(100 in order) 1.3 ms; mark_delivered(1 out of order) 0.2 ms
