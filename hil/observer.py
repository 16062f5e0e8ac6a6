"""What the HIL runner watches while a scenario runs: the agent's process (RSS, CPU) and its
store (every committed sample, its outbox, its counters and drop events), read-only, every
half second — so rows the agent prunes later still count. hil/report.py turns it into a report.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from buffer.polls import decode
from hil.platform_sim import PlatformSim

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcStats:
    """Peak RSS and CPU time of the agent, over every process it ran as (kill -9 restarts)."""

    peak_rss_kib: int = 0
    cpu_s_done: float = 0.0  # processes that are gone
    cpu_s_live: float = 0.0  # the current one, last sample
    pid: int | None = None

    def sample(self, pid: int) -> None:
        if pid != self.pid:
            self.cpu_s_done += self.cpu_s_live
            self.cpu_s_live, self.pid = 0.0, pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        fields = stat.rsplit(")", 1)[1].split()
        self.cpu_s_live = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime

    @property
    def cpu_s(self) -> float:
        return self.cpu_s_done + self.cpu_s_live


@dataclass
class Observer:
    """Polls the agent's SQLite (read only) and the platform's store during the run."""

    agent_db: Path
    platform: PlatformSim
    committed: dict[tuple[str, str, int], int] = field(default_factory=dict)  # -> quality
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)
    proc: ProcStats = field(default_factory=ProcStats)
    agent_counters: dict[str, int] = field(default_factory=dict)  # pruned_readings, dropped_…
    # Every outbox row seen: seq -> (type, sha256 hex, sample keys of a readings envelope).
    envelopes: dict[int, tuple[str, str, list[tuple[str, str, int]]]] = field(
        default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)  # seq -> type, `envelope_dropped` events
    rowid: dict[tuple[str, str, int], int] = field(default_factory=dict)  # sample -> polls.id
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (time, agent CPU s so far)
    # Samples seen committed whose rows a store fault then destroyed (WAL lost, older copy
    # restored, store replaced after corruption): rewind() collects them.
    destroyed: set[tuple[str, str, int]] = field(default_factory=set)
    _last_id: int = 0
    _layouts: dict[int, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # id -> meter, points
    _last_seq: int = 0
    _last_event: int = 0

    def poll(self) -> None:
        """One observation; runs in a worker thread (never on the sims' event loop)."""
        pending = -1
        if self.agent_db.exists():
            try:
                db = sqlite3.connect(f"file:{self.agent_db}?mode=ro", uri=True, timeout=2)
                try:
                    self._read_polls(db)
                    self.agent_counters = dict(db.execute("SELECT name, value FROM counters"))
                    self._read_outbox(db)
                    w = db.execute("SELECT watermark FROM delivery WHERE destination='mqtt'"
                                   ).fetchone()
                    if w is not None:
                        pending = db.execute(
                            "SELECT count(*) FROM outbox WHERE seq > ? AND seq NOT IN "
                            "(SELECT seq FROM delivery_marks WHERE destination='mqtt')",
                            (w[0],)).fetchone()[0]
                finally:
                    db.close()
            except sqlite3.Error:
                pass  # not created yet, or mid-migration: next time
        received = self.platform.sample_count()
        self.timeline.append((time.time(), len(self.committed), received, pending))
        self.cpu.append((time.time(), self.proc.cpu_s))

    def _read_polls(self, db: sqlite3.Connection) -> None:
        """New poll rows (one per meter poll, buffer/polls.py): every sample in them."""
        rows = db.execute("SELECT id, layout_id, ts, vals, quality, ts_delta FROM polls WHERE id > ?"
                          " ORDER BY id", (self._last_id,)).fetchall()
        if any(lid not in self._layouts for _, lid, *_ in rows):
            self._layouts.update({lid: (meter, tuple(json.loads(points))) for lid, meter, points
                                  in db.execute("SELECT layout_id, meter, points FROM layouts")})
        for rid, lid, ts, vals, quality, delta in rows:
            meter, points = self._layouts[lid]
            times, _, qualities = decode(len(points), ts, vals, quality, delta)
            for point, t, q in zip(points, times, qualities, strict=True):
                self.committed[meter, point, t] = int(q)
                self.rowid[meter, point, t] = rid
            self._last_id = rid

    def _read_outbox(self, db: sqlite3.Connection) -> None:
        """New outbox rows (their samples, before anything can drop them) and new drops."""
        rows = db.execute(
            "SELECT o.seq, o.type, o.checksum, CASE WHEN o.type = 'readings' THEN p.payload END"
            " FROM outbox o JOIN payloads p USING (seq) WHERE o.seq > ? ORDER BY o.seq",
            (self._last_seq,)).fetchall()
        for seq, type_, checksum, payload in rows:
            keys: list[tuple[str, str, int]] = []
            if payload is not None:
                try:
                    samples = json.loads(payload)["body"]["samples"]
                    keys = [(m, p, ts) for m, p, ts, _v, _q in samples]
                except (ValueError, KeyError, TypeError):
                    pass  # the platform will reject it; the report says so
            self.envelopes[seq] = (type_, bytes(checksum).hex(), keys)
            self._last_seq = seq
        for eid, data in db.execute(
                "SELECT id, data FROM events WHERE kind = 'envelope_dropped' AND id > ?"
                " ORDER BY id", (self._last_event,)):
            info = json.loads(data)
            self.dropped[int(info["seq"])] = str(info["type"])
            self._last_event = eid

    def rewind(self, fresh: bool = False) -> None:
        """The store was taken back in time (or replaced: `fresh`) while the agent was down:
        read from where it now ends, and note the samples seen committed that it lost."""
        max_id = max_seq = max_event = 0
        if not fresh and self.agent_db.exists():
            try:
                db = sqlite3.connect(f"file:{self.agent_db}?mode=ro", uri=True, timeout=2)
                try:
                    max_id = db.execute("SELECT coalesce(max(id), 0) FROM polls").fetchone()[0]
                    max_seq = db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]
                    max_event = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
                finally:
                    db.close()
            except sqlite3.Error:
                pass
        self.destroyed |= {k for k, rid in self.rowid.items() if rid > max_id}
        self._last_id, self._last_seq, self._last_event = max_id, max_seq, max_event
        self._layouts.clear()

    @property
    def outbox_pending(self) -> int:
        return self.timeline[-1][3] if self.timeline else 0
