"""The agent's SQLite thread in isolation: add_readings per poll tick plus sealing, in µs per
meter-poll (one meter-poll = one Modbus transaction = one meter's points).

Mirrors poll_cpu_rss.py's load (100 meters × 12 points, a tick every second, sealing every
5 ticks) without the network, the event loop or the broker, so the store and sealer paths can
be compared before and after a change. The Readings are built before the clock starts: the
driver makes them, not the store thread.

Run from the repo root: PYTHONPATH=. .venv/bin/python bench/seal_store.py [--ticks 300]
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import time
from pathlib import Path

from agent.config import load_config
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from buffer.store import Store
from drivers.base import Reading

T0 = 1_800_000_000_000  # after the sealer's build date, so the clock check passes


def write_config(tmp: Path, meters: int, points: int) -> Path:
    generate_key(tmp / "k.pem")
    lines = [f"""
[agent]
gateway = "bench"
enterprise = "91370600780790663W"
data_dir = "{tmp / 'data'}"
[platform]
host = "127.0.0.1"
port = 1883
[signing]
key_file = "{tmp / 'k.pem'}"
[schedule]
poll_interval = 1
seal_interval = 5
"""]
    for i in range(meters):  # as poll_cpu_rss.py: half u32 counters, half f32 instantaneous
        lines.append(f'[[bus]]\nname = "b{i}"\nkind = "modbus-tcp"\nhost = "127.0.0.1"\nport = 502\n')
        lines.append(f'[[meter]]\nname = "m{i}"\nbus = "b{i}"\nunit = 1\n')
        for j in range(points):
            typ = "u32" if j < points // 2 else "f32"
            lines.append(f'[[meter.point]]\nname = "p{j}"\nregister = {2 * j}\ntype = "{typ}"\n')
    path = tmp / "agent.toml"
    path.write_text("".join(lines))
    return path


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def tick_rows(tick: int, meters: int, points: int, requests: int) -> list[Reading]:
    """One poll tick: every meter's points in order; with several requests per meter each
    request's points carry its own reply time. Names are shared strings, as the drivers pass
    their config's meter.name and point.name."""
    rows = []
    per_request = -(-points // requests)
    for i in range(meters):
        ts = T0 + tick * 1000 + i
        for j in range(points):
            t = ts + (j // per_request) * 7
            counter = j < points // 2
            value = float(100_000 + 3 * tick + j) if counter else f32(230.0 + ((tick * 7 + i + j) % 50) / 10)
            rows.append(Reading(METERS[i], POINTS[j], t, value))
    return rows


METERS = [f"m{i}" for i in range(10_000)]
POINTS = [f"p{j}" for j in range(1_000)]


def raw_bytes(store: Store) -> int:
    """Pages of the raw-sample tables and their indexes (dbstat), whatever the schema version."""
    store.checkpoint()
    return int(store.conn.execute(
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name NOT LIKE '%outbox%'"
        " AND name NOT LIKE '%payloads%' AND name NOT LIKE 'sqlite_%'").fetchone()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--points", type=int, default=12)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--seal-every", type=int, default=5)
    ap.add_argument("--requests", type=int, default=1, help="Modbus requests per meter-poll")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = load_config(write_config(tmp, a.meters, a.points))
        store = Store(tmp / "agent.db")
        clock = [T0 / 1000]
        sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file), clock=lambda: clock[0])
        warm = 2 * a.seal_every
        ticks = [tick_rows(t, a.meters, a.points, a.requests) for t in range(warm + a.ticks)]
        add_cpu = seal_cpu = 0.0
        wall0 = cpu0 = 0.0
        envelopes = 0
        for t, rows in enumerate(ticks):
            if t == warm:  # layouts, caches and the first envelopes are made before timing
                raw0 = raw_bytes(store)
                add_cpu = seal_cpu = 0.0
                envelopes = 0
                wall0, cpu0 = time.perf_counter(), time.process_time()
            clock[0] = (T0 + t * 1000) / 1000
            c = time.process_time()
            store.readings.add_readings(rows)
            c2 = time.process_time()
            add_cpu += c2 - c
            if (t + 1) % a.seal_every == 0:
                envelopes += sealer.seal_readings()
                seal_cpu += time.process_time() - c2
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        polls = a.ticks * a.meters
        samples = polls * a.points
        per = (raw_bytes(store) - raw0) / samples
        print(f"{a.meters} meters x {a.points} points, {a.requests} request(s) per meter-poll,"
              f" {a.ticks} ticks, sealing every {a.seal_every}: {envelopes} envelopes")
        print(f"  per meter-poll: CPU {cpu / polls * 1e6:.1f} us (add_readings {add_cpu / polls * 1e6:.1f},"
              f" sealing {seal_cpu / polls * 1e6:.1f}), wall {wall / polls * 1e6:.1f} us")
        print(f"  raw samples on disk: {per:.1f} bytes/sample (their tables and indexes; the outbox apart)")
        store.close()


if __name__ == "__main__":
    main()
