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
- **dropped by policy**: envelopes the agent dropped unsent because its disk budget left no
  other choice (buffer/retention.py, last step), read from its `envelope_dropped` events and
  its `dropped_envelopes` counter; their samples are not "lost" but accounted separately —
  and only when the drop was counted, recorded and told to the platform in a status envelope.
  The runner reads every envelope's samples from the agent's outbox while it waits there, so
  it knows which samples a dropped envelope held.
- **backlog**: committed samples not yet at the platform, and the agent's outbox rows not
  yet delivered, sampled every half second; **drain time**: for each moment a fault ended,
  how long until the platform held every sample committed before it.
- **during faults**: agent CPU time and poll coverage between each fault's start and end.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hil.observer import Observer
from hil.platform_sim import PlatformSim
from hil.sim_meter import SimMeter


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
    offline_seen: list[str] = field(default_factory=list)  # meters with OFFLINE samples
    gap_meters: dict[str, int] = field(default_factory=dict)  # meter -> its gap samples
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
    # Policy drops (disk budget): envelopes, the samples they held (ts <= cut-off, never
    # received), the agent's own counter, and what its last status envelope told the platform.
    dropped_envelopes: int = 0
    dropped_seqs: list[int] = field(default_factory=list)
    dropped_samples: int = 0
    dropped_placed_by_rowid: int = 0  # of those, not read from the outbox before the drop
    dropped_counter: int = 0
    dropped_reported: int | None = None
    show_dropped: bool = False
    # History (disk budget): reports the rig entered, how many the platform holds, how many
    # were dropped, and whether a status envelope carried the storage alarm.
    reports_entered: int = 0
    reports_at_platform: int = 0
    reports_dropped: int = 0
    storage_alarm_reported: bool = False
    fault_s: float = 0.0  # seconds under a fault
    fault_cpu_s: float = 0.0  # agent CPU time during those
    fault_coverage: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # the agent's, at the end
    notes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def text(self) -> str:
        c = self.chain
        lines = [
            f"scenario {self.name}: {self.duration_s:.0f} s",
            f"  readings expected   {self.expected}   (committed by the agent, ts ≤ cut-off)",
            f"  readings received   {self.received}",
        ]
        if self.show_dropped or self.dropped_envelopes or self.dropped_counter:
            told = "—" if self.dropped_reported is None else str(self.dropped_reported)
            lines += [
                f"  dropped by policy   {self.dropped_samples} samples in "
                f"{self.dropped_envelopes} unsent envelopes{_seqs(self.dropped_seqs)} "
                f"(disk budget; agent counter {self.dropped_counter}, "
                f"told the platform {told})",
            ]
            if self.reports_entered:
                lines.append(f"  reports kept        {self.reports_at_platform} at the platform "
                             f"({self.reports_entered} entered, {self.reports_dropped} dropped); "
                             f"storage alarm {'reported' if self.storage_alarm_reported else 'not reported'}")
            if self.dropped_placed_by_rowid:
                lines.append(f"                      ({self.dropped_placed_by_rowid} of those "
                             "samples placed by row id: sealed and dropped between two looks)")
        lines += [
            f"  lost                {self.lost}"
            + ("   (not received, not in a dropped envelope)"
               if self.dropped_envelopes else ""),
            f"  duplicated          {self.duplicated}",
            f"  unexpected          {self.unexpected}",
            f"  wrong value         {self.wrong}",
            f"  gap samples         {self.gaps}   (quality ≠ 0: no reply, offline, …)",
            f"  envelopes rejected  {self.rejected}",
            f"  chain               {c.get('envelopes', 0)} envelopes, seq 1..{c.get('max_seq', 0)}, "
            f"missing {len(c.get('missing', []))}, broken {len(c.get('broken', []))}"
            + (f" (+{len(c['dropped'])} dropped by policy, links across them checked"
               f" {c.get('links_checked', 0)}/{c.get('links_to_check', 0)})" if c.get("dropped") else "")
            + f" → {'intact' if c.get('intact') else 'NOT INTACT'}",
            f"  backlog peak        {self.backlog_peak_samples} samples, "
            f"{self.backlog_peak_envelopes} envelopes",
            "  drain time          " + _drains(self.drain_s),
            "  coverage            " + ", ".join(
                f"{m} {v:.0%}" for m, v in sorted(self.coverage.items())),
            f"  agent peak RSS      {self.peak_rss_mib:.1f} MiB",
            f"  agent CPU time      {self.cpu_s:.1f} s",
        ]
        if self.fault_s:
            lines.append(
                f"  during faults       {self.fault_s:.0f} s: agent CPU {self.fault_cpu_s:.1f} s "
                f"({self.fault_cpu_s / self.fault_s:.1%}), coverage " + ", ".join(
                    f"{m} {v:.0%}" for m, v in sorted(self.fault_coverage.items())))
        if self.kills:
            lines.append(f"  kill -9             {self.kills} (with outbox backlog: "
                         f"{self.kills_during_backlog})")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  e.g. {e}" for e in self.examples[:5]]
        lines.append("  RESULT: " + ("PASS" if not self.failures else
                                     "FAIL — " + "; ".join(self.failures)))
        return "\n".join(lines)


def _seqs(seqs: list[int]) -> str:
    if not seqs:
        return ""
    runs: list[str] = []
    start = prev = seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        runs.append(str(start) if start == prev else f"{start}..{prev}")
        if s is not None:
            start = prev = s
    text = ", ".join(runs[:4]) + (", …" if len(runs) > 4 else "")
    return f" (seq {text})"


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
    enterprise: str, gateway: str, faults_ms: list[tuple[int, int]] | None = None,
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
            rep.gap_meters[meter] = rep.gap_meters.get(meter, 0) + 1
        elif meter not in meters or not meters[meter].matches(point, ts, value, window_ms):
            rep.wrong += 1
            if len(rep.examples) < 5 and meter in meters:
                true = meters[meter].true_value(point, ts)
                rep.examples.append(f"wrong: {meter}/{point} at {ts}: got {value}, true {true}")
    in_cut = {k for k in received if k[2] <= cutoff_ms}
    rep.expected = len(expected)
    rep.received = len(in_cut)
    # Samples of envelopes dropped by policy: accounted apart, never "lost".
    dropped_keys = {k for k in dropped_samples(obs, expected, rows) if k[2] <= cutoff_ms}
    read = {k for seq in obs.dropped for k in obs.envelopes.get(seq, ("", "", []))[2]}
    rep.dropped_placed_by_rowid = len(dropped_keys - read)
    rep.dropped_envelopes, rep.dropped_seqs = len(obs.dropped), sorted(obs.dropped)
    rep.dropped_samples = len(dropped_keys)
    rep.dropped_counter = int(obs.agent_counters.get("dropped_envelopes", 0))
    rep.dropped_reported = reported_drops(obs.platform, enterprise, gateway)
    rep.reports_dropped = sum(1 for t in obs.dropped.values() if t in REPORT_TYPES)
    rep.reports_at_platform, rep.storage_alarm_reported = _history(obs.platform, enterprise,
                                                                   gateway)
    lost = [k for k in expected if k not in received and k not in dropped_keys]
    rep.lost = len(lost)
    rep.examples += [f"lost: {k}" for k in lost[:3]]
    rep.duplicated = sum(1 for k in in_cut if received[k] > 1)
    rep.unexpected = sum(1 for k in in_cut if k not in obs.committed)
    rep.rejected = obs.platform.counters.rejected
    rep.chain = chain_with_drops(obs, enterprise, gateway)
    rep.backlog_peak_samples = max((c - r for _t, c, r, _p in obs.timeline), default=0)
    rep.backlog_peak_envelopes = max((p for *_x, p in obs.timeline), default=0)
    for t in restores_ms:
        before = [arrival.get(k) for k in expected if k[2] <= t and k not in dropped_keys]
        if before and all(a is not None for a in before):
            rep.drain_s.append(max(0, max(a for a in before if a is not None) - t) / 1000)
    polls = max(1.0, (cutoff_ms - started_ms) / 1000 / poll_interval)
    good: dict[str, set[int]] = {}
    for (meter, _point, ts), q in expected.items():
        if q == 0:
            good.setdefault(meter, set()).add(int(ts // (poll_interval * 1000)))
    for m in meters:
        rep.coverage[m] = min(1.0, len(good.get(m, ())) / polls)
    faults_ms = faults_ms or []
    for start, end in faults_ms:
        end = min(end, cutoff_ms)
        if end <= start:
            continue
        rep.fault_s += (end - start) / 1000
        rep.fault_cpu_s += _cpu_at(obs.cpu, end / 1000) - _cpu_at(obs.cpu, start / 1000)
    if rep.fault_s:
        slots = {(int(s // (poll_interval * 1000)), int(e // (poll_interval * 1000)))
                 for s, e in faults_ms}
        n = sum(max(0, min(e, int(cutoff_ms // (poll_interval * 1000))) - s) for s, e in slots)
        for m in meters:
            got = {slot for slot in good.get(m, ()) if any(s <= slot < e for s, e in slots)}
            rep.fault_coverage[m] = min(1.0, len(got) / n) if n else 0.0
    rep.counters = dict(obs.agent_counters)
    if obs.agent_counters:
        rep.notes.append("agent counters: " + ", ".join(
            f"{k} {v}" for k, v in sorted(obs.agent_counters.items())))
    rep.peak_rss_mib = obs.proc.peak_rss_kib / 1024
    rep.cpu_s = obs.proc.cpu_s
    return rep


def _cpu_at(cpu: list[tuple[float, float]], t: float) -> float:
    """Agent CPU seconds used up to time t (the last sample at or before it)."""
    before = [c for ts, c in cpu if ts <= t]
    return before[-1] if before else 0.0


def dropped_samples(obs: Observer, committed: Any,
                    platform_rows: list[tuple[Any, ...]] | None = None) -> set[tuple[str, str, int]]:
    """Committed samples that were never received because their envelope was dropped.

    Exact where the runner read the dropped envelope from the outbox before the drop. Where it
    could not (a pass can seal and drop within one half-second observation), the sealer's
    order decides: it seals readings in row-id order, so a sample whose row id lies between
    the last received readings envelope before it and the first one after it was in one of
    the readings envelopes between those two; when one of those was dropped by policy, so was
    the sample (a missing, not-dropped seq there breaks the chain and fails on its own).
    """
    if not obs.dropped:
        return set()
    if platform_rows is None:
        with obs.platform._lock:
            platform_rows = obs.platform.db.execute(
                "SELECT s.meter, s.point, s.ts, s.value, s.quality, e.seq FROM sample s "
                "JOIN envelope e ON e.id = s.envelope").fetchall()
    received = {(m, p, ts) for m, p, ts, *_x in platform_rows}
    exact = {k for seq in obs.dropped for k in obs.envelopes.get(seq, ("", "", []))[2]
             if k not in received}
    with obs.platform._lock:
        by_seq: dict[int, list[int]] = {}
        for seq, m, p, ts in obs.platform.db.execute(
                "SELECT e.seq, s.meter, s.point, s.ts FROM sample s "
                "JOIN envelope e ON e.id = s.envelope"):
            rid = obs.rowid.get((m, p, ts))
            if rid is not None:
                by_seq.setdefault(seq, []).append(rid)
    spans = sorted((seq, min(r), max(r)) for seq, r in by_seq.items())  # received readings
    dropped_readings = sorted(s for s, t in obs.dropped.items() if t == "readings")
    inferred = set()
    for key in committed:
        if key in received or key in exact:
            continue
        rid = obs.rowid.get(key)
        if rid is None:
            continue
        before = [sp for sp in spans if sp[2] < rid]
        after = [sp for sp in spans if sp[1] > rid]
        if len(before) + len(after) != len(spans):
            continue  # inside a received envelope's range, yet not received: lost
        lo = before[-1][0] if before else 0
        hi = after[0][0] if after else 2**62
        if any(lo < s < hi for s in dropped_readings):
            inferred.add(key)
    return exact | inferred


REPORT_TYPES = ("interval", "daily", "monthly", "manual")


def _history(platform: PlatformSim, enterprise: str, gateway: str) -> tuple[int, bool]:
    """(reports the platform accepted, whether any status envelope carried the storage alarm)."""
    marks = ",".join("?" * len(REPORT_TYPES))
    with platform._lock:
        n = platform.db.execute(
            f"SELECT count(*) FROM envelope WHERE enterprise=? AND gateway=? AND type IN ({marks})",
            (enterprise, gateway, *REPORT_TYPES)).fetchone()[0]
        rows = platform.db.execute(
            "SELECT wire FROM envelope WHERE enterprise=? AND gateway=? AND type='status'",
            (enterprise, gateway)).fetchall()
    alarm = any("storage_alarm" in json.loads(r[0]).get("body", {}) for r in rows)
    return int(n), alarm


def reported_drops(platform: PlatformSim, enterprise: str, gateway: str) -> int | None:
    """`counters.dropped_envelopes` of the newest status envelope the platform accepted."""
    with platform._lock:
        row = platform.db.execute(
            "SELECT wire FROM envelope WHERE enterprise=? AND gateway=? AND type='status'"
            " ORDER BY seq DESC LIMIT 1", (enterprise, gateway)).fetchone()
    if row is None:
        return None
    body = json.loads(row[0]).get("body", {})
    return int(body.get("counters", {}).get("dropped_envelopes", 0))


def chain_with_drops(obs: Observer, enterprise: str, gateway: str) -> dict[str, Any]:
    """The platform's view of the chain, where seqs dropped by policy are not "missing".

    A dropped envelope never reaches the platform, so its successor's `prev` cannot be
    checked there; the runner saw the dropped envelope's SHA-256 in the agent's outbox and
    checks the link itself.
    """
    c = obs.platform.chain(enterprise, gateway)
    missing = set(c["missing"])
    dropped = sorted(missing & set(obs.dropped))
    # Dropped by the agent, yet at the platform: it arrived, but its acknowledgement did not
    # come back before the drop (the broker went down in between). Not a gap.
    c["dropped_but_delivered"] = sorted(set(obs.dropped) - missing)
    c["missing"] = sorted(missing - set(obs.dropped))
    c["dropped"] = dropped
    if dropped:
        with obs.platform._lock:
            prevs = dict(obs.platform.db.execute(
                "SELECT seq, prev FROM envelope WHERE enterprise=? AND gateway=?",
                (enterprise, gateway)).fetchall())
        checked = 0
        for seq in dropped:
            if seq + 1 not in prevs:
                continue  # the successor was dropped too
            sha = obs.envelopes.get(seq, ("", "", []))[1]
            if not sha:
                continue  # sealed and dropped between two looks: the link cannot be checked
            if prevs[seq + 1] == sha:
                checked += 1
            else:
                c["broken"] = sorted({*c["broken"], seq + 1})
        c["links_checked"] = checked
        c["links_to_check"] = sum(1 for s in dropped if s + 1 in prevs)
    c["intact"] = not c["missing"] and not c["broken"]
    return c


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
    if expect.get("gaps_only_from_dead") and set(rep.gap_meters) - dead:
        rep.failures.append(f"gap samples from healthy meters: {sorted(set(rep.gap_meters) - dead)}")
    for m in expect.get("offline_meters", []):
        if m not in rep.offline_seen:
            rep.failures.append(f"{m} was never taken offline (no OFFLINE samples)")
    # Dropping unsent envelopes is a policy, allowed only where the scenario says so and only
    # when every drop was counted, recorded as an event and told to the platform.
    most = int(expect.get("max_dropped_envelopes", 0))
    least = int(expect.get("min_dropped_envelopes", 0))
    if rep.dropped_envelopes > most:
        rep.failures.append(f"{rep.dropped_envelopes} unsent envelopes dropped > {most}")
    if rep.dropped_envelopes < least:
        rep.failures.append(f"{rep.dropped_envelopes} unsent envelopes dropped < {least}: "
                            "the disk budget never forced the last step")
    if rep.dropped_counter != rep.dropped_envelopes:
        rep.failures.append(f"agent counter dropped_envelopes {rep.dropped_counter} ≠ "
                            f"{rep.dropped_envelopes} envelope_dropped events")
    if rep.dropped_envelopes and rep.dropped_reported != rep.dropped_counter:
        rep.failures.append(f"the platform was told of {rep.dropped_reported} drops, "
                            f"not {rep.dropped_counter}")
    delivered = set(rep.chain.get("dropped_but_delivered", []))
    if set(rep.chain.get("dropped", [])) != set(rep.dropped_seqs) - delivered:
        rep.failures.append("dropped seqs differ from the platform's gaps: "
                            f"{sorted(set(rep.chain.get('dropped', [])) ^ set(rep.dropped_seqs))[:5]}")
    if expect.get("keep_reports"):
        if rep.reports_dropped:
            rep.failures.append(f"{rep.reports_dropped} reports dropped: the history window "
                                "must keep them")
        if rep.reports_at_platform < rep.reports_entered or not rep.reports_entered:
            rep.failures.append(f"the platform holds {rep.reports_at_platform} reports of "
                                f"{rep.reports_entered} entered")
    if expect.get("storage_alarm") and not rep.storage_alarm_reported:
        rep.failures.append("no status envelope carried the storage alarm")
    for key in ("pruned_readings",):
        floor_n = expect.get(f"min_{key}")
        got = int(rep.counters.get(key, 0))
        if floor_n is not None and got < int(floor_n):
            rep.failures.append(f"agent counter {key} {got} < {floor_n}")
    share = expect.get("max_cpu_share")
    if share is not None and rep.cpu_s > float(share) * rep.duration_s:
        rep.failures.append(f"agent CPU {rep.cpu_s:.1f} s > {float(share):.0%} of the run")
    share = expect.get("max_fault_cpu_share")
    if share is not None and rep.fault_cpu_s > float(share) * rep.fault_s:
        rep.failures.append(f"agent CPU during faults {rep.fault_cpu_s:.1f} s > "
                            f"{float(share):.0%} of {rep.fault_s:.0f} s")
    max_drain = expect.get("max_drain_s")
    if max_drain is not None and any(d > float(max_drain) for d in rep.drain_s):
        rep.failures.append(f"drain {max(rep.drain_s):.1f} s > {max_drain} s")
