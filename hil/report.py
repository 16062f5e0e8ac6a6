"""What a HIL run observed and what it concludes: the loss report.

Definitions (docs/hil.md repeats them):

- **expected**: every sample the agent *committed* (its `readings` table, read from the
  agent's own SQLite every half second during the run, so rows pruned later still count)
  with ts ≤ the cut-off (the end of the scenario's timeline). A poll in flight when the
  agent was killed never committed, so it is not expected; that loss is allowed.
- **received**: every sample in a `readings` envelope the platform simulator accepted.
- **lost**: expected but never received. **duplicated**: received in more than one
  envelope. **unexpected**: received but never seen committed.
- **wrong**: a good sample whose value is not what the simulated meter showed in the
  window before its ts (`SimMeter.matches`).
- **backlog**: committed samples not yet at the platform, and the agent's outbox rows not
  yet delivered, sampled every half second; **drain time**: for each moment a fault ended,
  how long until the platform held every sample committed before it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.platform_sim import PlatformSim
from hil.sim_meter import SimMeter

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
    _last_id: int = 0

    def poll(self) -> None:
        """One observation; runs in a worker thread (never on the sims' event loop)."""
        pending = -1
        if self.agent_db.exists():
            try:
                db = sqlite3.connect(f"file:{self.agent_db}?mode=ro", uri=True, timeout=2)
                try:
                    rows = db.execute(
                        "SELECT r.id, s.meter, s.point, r.ts, r.quality FROM readings r "
                        "JOIN series s USING (series_id) WHERE r.id > ? ORDER BY r.id",
                        (self._last_id,)).fetchall()
                    for rid, meter, point, ts, quality in rows:
                        self.committed[meter, point, ts] = quality
                        self._last_id = rid
                    self.agent_counters = dict(db.execute("SELECT name, value FROM counters"))
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

    @property
    def outbox_pending(self) -> int:
        return self.timeline[-1][3] if self.timeline else 0


@dataclass
class Report:
    name: str
    duration_s: float
    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    wrong: int = 0
    gaps: int = 0  # received samples with quality != 0 (dead meter, timeouts)
    rejected: int = 0
    chain: dict[str, Any] = field(default_factory=dict)
    backlog_peak_samples: int = 0
    backlog_peak_envelopes: int = 0
    drain_s: list[float] = field(default_factory=list)
    coverage: dict[str, float] = field(default_factory=dict)  # meter -> good polls / expected
    peak_rss_mib: float = 0.0
    cpu_s: float = 0.0
    kills: int = 0
    kills_during_backlog: int = 0
    notes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def text(self) -> str:
        c = self.chain
        lines = [
            f"scenario {self.name}: {self.duration_s:.0f} s",
            f"  readings expected   {self.expected}   (committed by the agent, ts ≤ cut-off)",
            f"  readings received   {self.received}",
            f"  lost                {self.lost}",
            f"  duplicated          {self.duplicated}",
            f"  unexpected          {self.unexpected}",
            f"  wrong value         {self.wrong}",
            f"  gap samples         {self.gaps}   (quality ≠ 0: no reply, offline, …)",
            f"  envelopes rejected  {self.rejected}",
            f"  chain               {c.get('envelopes', 0)} envelopes, seq 1..{c.get('max_seq', 0)}, "
            f"missing {len(c.get('missing', []))}, broken {len(c.get('broken', []))} → "
            f"{'intact' if c.get('intact') else 'NOT INTACT'}",
            f"  backlog peak        {self.backlog_peak_samples} samples, "
            f"{self.backlog_peak_envelopes} envelopes",
            "  drain time          " + _drains(self.drain_s),
            "  coverage            " + ", ".join(
                f"{m} {v:.0%}" for m, v in sorted(self.coverage.items())),
            f"  agent peak RSS      {self.peak_rss_mib:.1f} MiB",
            f"  agent CPU time      {self.cpu_s:.1f} s",
        ]
        if self.kills:
            lines.append(f"  kill -9             {self.kills} (with outbox backlog: "
                         f"{self.kills_during_backlog})")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  e.g. {e}" for e in self.examples[:5]]
        lines.append("  RESULT: " + ("PASS" if not self.failures else
                                     "FAIL — " + "; ".join(self.failures)))
        return "\n".join(lines)


def _drains(d: list[float]) -> str:
    if not d:
        return "— (no fault ended)"
    if len(d) <= 3:
        return ", ".join(f"{x:.1f} s" for x in d)
    s = sorted(d)
    return f"{len(d)} fault ends: median {s[len(s) // 2]:.1f} s, max {s[-1]:.1f} s"


def build_report(
    name: str, obs: Observer, meters: dict[str, SimMeter], cutoff_ms: int,
    restores_ms: list[int], poll_interval: float, started_ms: int, window_ms: int,
    enterprise: str, gateway: str,
) -> Report:
    """Compare what was committed with what the platform accepted, sample by sample."""
    rep = Report(name=name, duration_s=(cutoff_ms - started_ms) / 1000)
    expected = {k: q for k, q in obs.committed.items() if k[2] <= cutoff_ms}
    received = Counter()
    arrival: dict[tuple[str, str, int], int] = {}
    with obs.platform._lock:
        rows = obs.platform.db.execute(
            "SELECT s.meter, s.point, s.ts, s.value, s.quality, e.received_ms FROM sample s "
            "JOIN envelope e ON e.id = s.envelope").fetchall()
    for meter, point, ts, value, quality, got_ms in rows:
        key = (meter, point, ts)
        received[key] += 1
        arrival[key] = min(arrival.get(key, got_ms), got_ms)
        if ts > cutoff_ms:
            continue
        if quality != 0:
            rep.gaps += 1
        elif meter not in meters or not meters[meter].matches(point, ts, value, window_ms):
            rep.wrong += 1
            if len(rep.examples) < 5 and meter in meters:
                true = meters[meter].true_value(point, ts)
                rep.examples.append(f"wrong: {meter}/{point} at {ts}: got {value}, true {true}")
    in_cut = {k for k in received if k[2] <= cutoff_ms}
    rep.expected = len(expected)
    rep.received = len(in_cut)
    lost = [k for k in expected if k not in received]
    rep.lost = len(lost)
    rep.examples += [f"lost: {k}" for k in lost[:3]]
    rep.duplicated = sum(1 for k in in_cut if received[k] > 1)
    rep.unexpected = sum(1 for k in in_cut if k not in obs.committed)
    rep.rejected = obs.platform.counters.rejected
    rep.chain = obs.platform.chain(enterprise, gateway)
    rep.backlog_peak_samples = max((c - r for _t, c, r, _p in obs.timeline), default=0)
    rep.backlog_peak_envelopes = max((p for *_x, p in obs.timeline), default=0)
    for t in restores_ms:
        before = [arrival.get(k) for k in expected if k[2] <= t]
        if before and all(a is not None for a in before):
            rep.drain_s.append(max(0, max(a for a in before if a is not None) - t) / 1000)
    polls = max(1.0, (cutoff_ms - started_ms) / 1000 / poll_interval)
    good: dict[str, set[int]] = {}
    for (meter, _point, ts), q in expected.items():
        if q == 0:
            good.setdefault(meter, set()).add(int(ts // (poll_interval * 1000)))
    for m in meters:
        rep.coverage[m] = min(1.0, len(good.get(m, ())) / polls)
    if obs.agent_counters:
        rep.notes.append("agent counters: " + ", ".join(
            f"{k} {v}" for k, v in sorted(obs.agent_counters.items())))
    rep.peak_rss_mib = obs.proc.peak_rss_kib / 1024
    rep.cpu_s = obs.proc.cpu_s
    return rep


def judge(rep: Report, expect: dict[str, Any]) -> None:
    """Fill rep.failures from the scenario's [expect] table (defaults: nothing lost)."""
    for key in ("lost", "wrong", "duplicated", "unexpected", "rejected"):
        limit = int(expect.get(key, 0))
        if getattr(rep, key) > limit:
            rep.failures.append(f"{key} {getattr(rep, key)} > {limit}")
    if expect.get("chain_intact", True) and not rep.chain.get("intact"):
        rep.failures.append("chain not intact")
    if rep.expected < int(expect.get("min_expected", 1)):
        rep.failures.append(f"only {rep.expected} samples committed")
    floor = float(expect.get("min_coverage", 0.0))
    dead = set(expect.get("dead_meters", []))
    for m, cov in rep.coverage.items():
        if m not in dead and cov < floor:
            rep.failures.append(f"coverage of {m} {cov:.0%} < {floor:.0%}")
    if dead and rep.gaps == 0:
        rep.failures.append("dead meter produced no gap samples")
    share = expect.get("max_cpu_share")
    if share is not None and rep.cpu_s > float(share) * rep.duration_s:
        rep.failures.append(f"agent CPU {rep.cpu_s:.1f} s > {float(share):.0%} of the run")
    max_drain = expect.get("max_drain_s")
    if max_drain is not None and any(d > float(max_drain) for d in rep.drain_s):
        rep.failures.append(f"drain {max(rep.drain_s):.1f} s > {max_drain} s")
