"""Retention: what may leave the store, in which order, and giving the space back.

Readings are stored one row per meter poll (buffer/polls.py) and leave the store a row at a
time; the counters and reports count samples (points), as before.

Two cursors say what the rest of the agent is done with:
- `sealed_rowid` (the sealer): poll rows up to this id are in the outbox (or need not be);
- `summarised_ts` (agent/accounting/reports.py): accounting will not read a reading older than this ms
  timestamp again — it is the start of the first period not yet sealed as a report, less the
  lookback an unseeded period reads. Absent (no reported points, or reports never ran): no
  reading is held back for accounting.
A reading is *summarised* when it is both sealed and older than `summarised_ts`.

Order (unsent data goes last: nothing is deleted before it is acknowledged unless the disk
budget leaves no other choice), each step only when the previous one was not enough:
1. summarised raw readings older than the raw window;
2. envelopes done (delivered or rejected) for every destination and older than the history window;
3. over the disk budget, oldest first:
   a. summarised raw readings of any age;
   b. done envelopes of any age, except reports (interval, daily, monthly, manual) younger
      than the history window: the regulation asks for 6 months of them, kept locally;
   c. sealed raw readings accounting still needs (newer than `summarised_ts`) — the open
      day's reports lose samples (flagged, lower completeness), so this is logged as a warning
      and counted (`pruned_needed_readings`), but it loses no message already signed;
4. over the budget, the very last resort: unsent envelopes — each one counted, logged with
   its id and recorded as an event — in order of what they are worth to the enterprise:
   heartbeats superseded by a newer one, then raw samples (the interval and daily reports
   carry their substance), then reports older than the history window, each oldest first.
Reports younger than the history window and the newest heartbeat are never deleted: when the
budget still cannot be met, the store raises the storage alarm (state `storage_alarm`, shown by
`status` and carried in every heartbeat) until it can — the budget is too small for the site.
Unsealed readings are never deleted. Deletes run in batches of one transaction each.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from buffer.names import SEALED_CURSOR, SUMMARISED_CURSOR
from buffer.store import Store

log = logging.getLogger("buffer.retention")

# The reports the regulation asks the access end to keep for 6 months (history_keep_days).
REPORT_TYPES = ("interval", "daily", "monthly", "manual")
_REPORTS_SQL = "(" + ", ".join(f"'{t}'" for t in REPORT_TYPES) + ")"
ALARM_KEY = "storage_alarm"

# "No reading is held for accounting": later than any timestamp a reading can carry.
_NO_HOLD = 2**62
BATCH = 10_000
POLL_BATCH = 2_000  # poll rows per delete transaction: ~24k samples of 12-point meters
# Pages are only given back to the filesystem past this many free pages: rewriting a few
# pages on every run would wear eMMC/SD for nothing (free pages are reused by new rows).
VACUUM_MIN_FREE_PAGES = 256
VACUUM_STEP_PAGES = 4096


@dataclass(frozen=True, slots=True)
class PruneReport:
    raw_readings: int = 0  # step 1
    history_envelopes: int = 0  # step 2
    budget_readings: int = 0  # step 3a, summarised raw readings within the raw window
    budget_envelopes: int = 0  # step 3b, done envelopes within the history window
    dropped_envelopes: int = 0  # step 4, never delivered
    dropped_ids: tuple[str, ...] = ()
    events: int = 0  # event records older than the history window
    bytes_before: int = 0
    bytes_after: int = 0
    over_budget: bool = False  # still over after everything allowed was pruned
    needed_readings: int = 0  # step 3c, sealed readings accounting still needed


def prune(store: Store, now_ms: int, raw_keep_ms: int, history_keep_ms: int,
          budget_bytes: int | None) -> PruneReport:
    before = store.size_bytes()
    sealed = store.state.cursor(SEALED_CURSOR)
    summarised = store.state.cursor(SUMMARISED_CURSOR, default=_NO_HOLD)
    raw_cut, history_cut = now_ms - raw_keep_ms, now_ms - history_keep_ms

    raw = _delete_readings(store, sealed, min(raw_cut, summarised), None)
    history = _delete_done_envelopes(store, history_cut, None)
    events = _delete_events(store, history_cut)

    budget_readings = budget_envelopes = needed = 0
    dropped: list[str] = []
    if budget_bytes is not None and store.used_bytes() > budget_bytes:
        budget_readings = _delete_readings(store, sealed, summarised, budget_bytes)
        if store.used_bytes() > budget_bytes:
            budget_envelopes = _delete_done_envelopes(store, None, budget_bytes,
                                                      keep_reports_after=history_cut)
        if store.used_bytes() > budget_bytes:
            needed = _delete_readings(store, sealed, None, budget_bytes,
                                      also_count="pruned_needed_readings")
            if needed:
                log.warning("disk budget: deleted %d sealed readings from %s on that reports not"
                            " yet sealed still read — they will show gaps; raise the budget",
                            needed, _iso(summarised))
        if store.used_bytes() > budget_bytes:
            dropped = _drop_unsent(store, now_ms, budget_bytes, history_cut)
    if history or budget_envelopes or dropped:
        store.outbox.advance_watermarks()
    _reclaim(store)

    over = budget_bytes is not None and store.used_bytes() > budget_bytes
    _alarm(store, now_ms, over, budget_bytes)
    report = PruneReport(raw, history, budget_readings, budget_envelopes, len(dropped),
                         tuple(dropped), events, before, store.size_bytes(), over, needed)
    budget_total = budget_readings + needed + budget_envelopes
    if raw or history or budget_total or dropped:
        log.info("retention pruned %d raw readings, %d envelopes, %d for the disk budget"
                 " (%d readings, %d envelopes), dropped %d unsent; %d -> %d bytes",
                 raw + budget_readings + needed, history + budget_envelopes, budget_total,
                 budget_readings + needed, budget_envelopes, len(dropped), before,
                 report.bytes_after)
    return report


def _alarm(store: Store, now_ms: int, over: bool, budget: int | None) -> None:
    """Raise the storage alarm when the budget cannot be met without deleting the history the
    regulation asks for; clear it when it can. One log line when it starts, one when it ends."""
    was = store.state.get(ALARM_KEY)
    if over:
        used = store.used_bytes()
        info = {"since_ms": json.loads(was)["since_ms"] if was else now_ms, "used_bytes": used,
                "budget_bytes": budget or 0,
                "reason": "the disk budget cannot hold the reports younger than "
                          "history_keep_days: raise storage.budget_mb"}
        store.state.set(ALARM_KEY, json.dumps(info, sort_keys=True))
        if not was:
            log.warning("storage alarm: %d bytes used, budget %d; reports younger than the history"
                        " window, unsent envelopes and unsealed readings are kept — raise"
                        " storage.budget_mb", used, budget or 0)
    elif was:
        store.state.set(ALARM_KEY, "")
        log.info("storage alarm cleared: the store is within its disk budget again")


def storage_alarm(store: Store) -> dict[str, Any] | None:
    """The raised storage alarm, or None."""
    text = store.state.get(ALARM_KEY)
    return json.loads(text) if text else None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _keep_going(store: Store, budget: int | None) -> bool:
    """Without a budget a step deletes all that qualifies; with one, until under it."""
    return budget is None or store.used_bytes() > budget


def _delete_readings(store: Store, sealed: int, before_ts: int | None,
                     budget: int | None, also_count: str | None = None) -> int:
    """Sealed poll rows oldest first: all older than before_ts, or until under budget.
    Returns the number of samples deleted. A row is as old as its first sample (the others
    follow within polls.MAX_SPAN_MS), so it goes whole."""
    sql = "SELECT id FROM polls WHERE id <= ?"
    params: list[Any] = [sealed]
    if before_ts is not None:
        sql += " AND ts < ?"
        params.append(before_ts)
    total = 0
    while _keep_going(store, budget):
        with store.transaction() as c:
            ids = [r[0] for r in c.execute(sql + " ORDER BY id LIMIT ?", [*params, POLL_BATCH])]
            samples = 0
            if ids:
                # ids ascend and all are <= sealed: one range delete, the ts filter re-applied.
                samples = store.readings.delete_polls(c, ids[0], ids[-1], before_ts)
                _count(c, "pruned_readings", samples)
                if also_count:
                    _count(c, also_count, samples)
        total += samples
        if len(ids) < POLL_BATCH:
            break
    return total


def _done_condition(store: Store) -> tuple[str, list[Any]]:
    """SQL true for an outbox row `o` that every configured destination is done with."""
    parts, params = [], []
    for d in store.destinations:
        parts.append("(o.seq <= (SELECT watermark FROM delivery WHERE destination = ?)"
                     " OR EXISTS (SELECT 1 FROM delivery_marks m"
                     " WHERE m.destination = ? AND m.seq = o.seq))")
        params += [d, d]
    return " AND ".join(parts), params


def _delete_envelopes(c: Any, seqs: Sequence[int]) -> None:
    rows = [(s,) for s in seqs]
    c.executemany("DELETE FROM outbox WHERE seq = ?", rows)
    c.executemany("DELETE FROM payloads WHERE seq = ?", rows)


def _delete_done_envelopes(store: Store, before_ms: int | None, budget: int | None,
                           keep_reports_after: int | None = None) -> int:
    done, params = _done_condition(store)
    sql = f"SELECT o.seq FROM outbox o WHERE {done}"
    if before_ms is not None:
        sql += " AND o.created_ms < ?"
        params.append(before_ms)
    if keep_reports_after is not None:
        sql += f" AND (o.type NOT IN {_REPORTS_SQL} OR o.created_ms < ?)"
        params.append(keep_reports_after)
    # Under a budget, small batches: envelopes can be large and each one is history.
    batch = BATCH if budget is None else 200
    total = 0
    while _keep_going(store, budget):
        with store.transaction() as c:
            seqs = [r[0] for r in c.execute(sql + " ORDER BY o.seq LIMIT ?", [*params, batch])]
            _delete_envelopes(c, seqs)
            if seqs:
                _count(c, "pruned_envelopes", len(seqs))
        total += len(seqs)
        if len(seqs) < batch:
            break
    return total


# Step 4's order (see the module docstring), as filters on the outbox read in seq order; the
# unary + keeps SQLite walking the table by seq (stopping at the first match) instead of the
# (type, period) index and a sort.
_DROP_CLASSES = (
    " WHERE +type = 'status' AND seq < :newest_status",  # heartbeats a newer one supersedes
    " WHERE +type = 'readings'",
    f" WHERE +type IN {_REPORTS_SQL} AND created_ms < :history_cut",  # past the history window
)


def _drop_unsent(store: Store, now_ms: int, budget: int, history_cut: int) -> list[str]:
    dropped: list[str] = []
    seqs: list[int] = []
    types: dict[str, int] = {}
    newest = store.rows("SELECT max(seq) FROM outbox WHERE type = 'status'")[0][0]
    classes = list(_DROP_CLASSES)
    while store.used_bytes() > budget and classes:
        with store.transaction() as c:
            # One at a time, re-checking the budget: every unsent envelope dropped is data the
            # platform will never get, so drop no more than the budget needs.
            rows = c.execute("SELECT seq, id, type, period, created_ms FROM outbox" + classes[0]
                             + " ORDER BY seq LIMIT 1",
                             {"newest_status": newest or 0, "history_cut": history_cut}).fetchall()
            _delete_envelopes(c, [r[0] for r in rows])
            for seq, id_, type_, period, created in rows:
                info = {"seq": seq, "id": id_, "type": type_, "period": period,
                        "created_ms": created}
                c.execute("INSERT INTO events(kind, ts_ms, data) VALUES (?, ?, ?)",
                          ("envelope_dropped", now_ms, json.dumps(info, sort_keys=True)))
            if rows:
                _count(c, "dropped_envelopes", len(rows))
                last = {"id": rows[-1][1], "seq": rows[-1][0], "at_ms": now_ms}
                c.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)",
                          ("last_dropped_envelope", json.dumps(last, sort_keys=True)))
        for seq, id_, type_, _, _ in rows:
            dropped.append(id_)
            seqs.append(seq)
            types[type_] = types.get(type_, 0) + 1
        if not rows:
            classes.pop(0)  # none of this class left (none is sealed during a pass)
    if dropped:
        # One line per pass (each drop is an event in the store): a full disk must not also
        # fill the journal.
        log.error("disk budget exhausted: dropped %d unsent envelope(s), %s to %s (seq %d-%d; %s)"
                  " — each recorded as an envelope_dropped event; raise storage.budget_mb",
                  len(dropped), dropped[0], dropped[-1], seqs[0], seqs[-1],
                  ", ".join(f"{n} {t}" for t, n in sorted(types.items())))
    return dropped


def _delete_events(store: Store, before_ms: int) -> int:
    with store.transaction() as c:
        return int(c.execute("DELETE FROM events WHERE ts_ms < ?", (before_ms,)).rowcount)


def _count(c: Any, name: str, n: int) -> None:
    c.execute("INSERT INTO counters(name, value) VALUES (?, ?)"
              " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, n))


def _reclaim(store: Store) -> None:
    """Give free pages back to the filesystem in steps, then shrink the WAL."""
    free = store.free_pages()
    if free < VACUUM_MIN_FREE_PAGES:
        return
    while free > 0:
        store.give_back_pages(VACUUM_STEP_PAGES)
        left = store.free_pages()
        if left >= free:
            break
        free = left
    store.checkpoint()
