"""The durable store: readings, the signed envelope outbox with per-destination delivery, state.

SQLite is the only durable queue. A reading or envelope exists once its transaction commits
(WAL, synchronous=FULL). One connection, used from one thread at a time (the app runs every
store call in a single-thread executor); the object is not thread-safe and need not be.
Any SQLite failure becomes StoreError: the app must stop rather than poll into the void.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buffer import schema
from drivers.base import Quality, Reading

log = logging.getLogger("buffer.store")


@dataclass(frozen=True, slots=True)
class EnvelopeMeta:
    seq: int
    id: str
    type: str  # readings | interval | daily | monthly | manual | status
    topic: str
    created_ms: int
    period: str | None = None  # "2026-11-21" daily, "2026-11" monthly, "2026-11-21T10:15" interval


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    id: str
    type: str
    topic: str
    payload: bytes
    created_ms: int
    period: str | None


@dataclass(frozen=True, slots=True)
class MeterStatus:
    meter: str
    bus: str
    online: bool
    last_good_ms: int | None
    last_error_ms: int | None
    last_error: str | None
    errors_total: int
    consecutive_failures: int


class StoreError(Exception):
    """The store can no longer be trusted (I/O error, disk full, corruption): exit non-zero."""


def _describe(path: Path, e: sqlite3.Error) -> str:
    text = str(e)
    if "full" in text:
        return (f"store {path}: database or disk is full — free space on the data partition"
                " or lower the disk budget")
    if schema.is_corruption(e):
        return f"store {path}: database is corrupt ({text}) — it is moved aside on restart"
    return f"store {path}: {type(e).__name__}: {text}"


_CORRUPT_REASON = "corrupt on disk: checksum mismatch"
_OUTBOX_COLS = "o.seq, o.id, o.type, o.topic, p.payload, o.created_ms, o.period, o.checksum"


class Store:
    ZERO_HASH = schema.ZERO_HASH

    def __init__(self, path: str | Path, destinations: Sequence[str] = ("mqtt",),
                 readonly: bool = False) -> None:
        """Open (create, migrate, check) the store. `readonly` is for inspecting the store of
        a running agent (status, export): no migration, no repair, and every write fails."""
        self.path = Path(path)
        self.readonly = readonly
        self.destinations: tuple[str, ...] = tuple(destinations)
        if not self.destinations:
            raise ValueError("a store needs at least one destination")
        self._series: dict[tuple[str, str], int] = {}
        try:
            if readonly:
                self._conn = schema.open_readonly(self.path)
            else:
                self._conn = schema.open_database(self.path)
        except schema.SchemaError as e:
            raise StoreError(f"store {self.path}: {e}") from e
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"store {self.path}: cannot open: {e}") from e
        if not readonly:
            with self.transaction() as c:
                c.executemany(
                    "INSERT OR IGNORE INTO delivery(destination, watermark) VALUES (?, 0)",
                    [(d,) for d in self.destinations],
                )
        for sid, meter, point in self._all("SELECT series_id, meter, point FROM series"):
            self._series[(meter, point)] = sid

    def close(self) -> None:
        self._conn.close()

    # -- plumbing (also used by buffer.retention) ------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on exit, rolled back on any exception.

        SQLite errors become StoreError; other exceptions propagate unchanged.
        """
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(_describe(self.path, e)) from e
        try:
            yield c
            c.execute("COMMIT")
        except BaseException as e:
            if c.in_transaction:
                with suppress(sqlite3.Error):  # the original error is what matters
                    c.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(_describe(self.path, e)) from e
            raise

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(_describe(self.path, e)) from e

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    # -- readings ---------------------------------------------------------------------------

    def add_readings(self, rows: Sequence[Reading], statuses: Sequence[MeterStatus] = ()) -> None:
        new: dict[tuple[str, str], int] = {}
        with self.transaction() as c:
            values = []
            for r in rows:
                key = (r.meter, r.point)
                sid = self._series.get(key) or new.get(key)
                if sid is None:
                    sid = c.execute("INSERT INTO series(meter, point) VALUES (?, ?)", key).lastrowid
                    assert sid is not None
                    new[key] = sid
                values.append((sid, r.ts, r.value, int(r.quality)))
            c.executemany(
                "INSERT INTO readings(series_id, ts, value, quality) VALUES (?, ?, ?, ?)", values
            )
            c.executemany(
                "INSERT OR REPLACE INTO meter_status VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(s.meter, s.bus, int(s.online), s.last_good_ms, s.last_error_ms, s.last_error,
                  s.errors_total, s.consecutive_failures) for s in statuses],
            )
        # Only after the commit: a rolled-back series id must not stay cached.
        self._series.update(new)

    def readings_after(self, rowid: int, limit: int) -> list[tuple[int, Reading]]:
        rows = self._all(
            "SELECT r.id, s.meter, s.point, r.ts, r.value, r.quality FROM readings r"
            " JOIN series s ON s.series_id = r.series_id WHERE r.id > ? ORDER BY r.id LIMIT ?",
            (rowid, limit),
        )
        return [(i, Reading(m, p, ts, v, Quality(q))) for i, m, p, ts, v, q in rows]

    def samples_after(self, rowid: int, limit: int) -> list[tuple[int, str, str, int, float | None, int]]:
        """Like readings_after, as plain (rowid, meter, point, ts, value, quality) tuples: the
        sealer's hot path, which has no use for Reading objects."""
        return self._all(
            "SELECT r.id, s.meter, s.point, r.ts, r.value, r.quality FROM readings r"
            " JOIN series s ON s.series_id = r.series_id WHERE r.id > ? ORDER BY r.id LIMIT ?",
            (rowid, limit),
        )

    def readings_for(self, meter: str, point: str, start_ms: int, end_ms: int) -> list[Reading]:
        sid = self._series.get((meter, point))
        if sid is None:  # not cached: a read-only store sees series the writer added later
            row = self._one("SELECT series_id FROM series WHERE meter = ? AND point = ?",
                            (meter, point))
            if row is None:
                return []
            sid = row[0]
        rows = self._all(
            "SELECT ts, value, quality FROM readings WHERE series_id = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts, id",
            (sid, start_ms, end_ms),
        )
        return [Reading(meter, point, ts, v, Quality(q)) for ts, v, q in rows]

    def last_reading_ts(self) -> int | None:
        """The timestamp of the most recently committed reading (not the largest timestamp:
        after a clock correction the newest sample is what tells the time)."""
        row = self._one("SELECT ts FROM readings ORDER BY id DESC LIMIT 1")
        return None if row is None else int(row[0])

    def meter_statuses(self) -> list[MeterStatus]:
        rows = self._all("SELECT * FROM meter_status ORDER BY meter")
        return [MeterStatus(m, b, bool(o), g, e_ms, e, n, cf) for m, b, o, g, e_ms, e, n, cf in rows]

    # -- chain and outbox -------------------------------------------------------------------

    def chain_head(self) -> tuple[int, str]:
        row = self._one("SELECT next_seq, head FROM chain WHERE id = 1")
        return int(row[0]), str(row[1])

    def enqueue(self, payload: bytes, meta: EnvelopeMeta,
                cursor: tuple[str, int] | None = None) -> int:
        digest = hashlib.sha256(payload).digest()
        with self.transaction() as c:
            next_seq = c.execute("SELECT next_seq FROM chain WHERE id = 1").fetchone()[0]
            if meta.seq != next_seq:
                raise StoreError(
                    f"store {self.path}: envelope {meta.id} has seq {meta.seq}, expected {next_seq}"
                    " — two sealers, or a chain_head() read before another enqueue"
                )
            c.execute(
                "INSERT INTO outbox(seq, id, type, topic, created_ms, period, checksum)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (meta.seq, meta.id, meta.type, meta.topic, meta.created_ms, meta.period, digest),
            )
            c.execute("INSERT INTO payloads(seq, payload) VALUES (?, ?)", (meta.seq, payload))
            c.execute("UPDATE chain SET next_seq = ?, head = ? WHERE id = 1",
                      (meta.seq + 1, digest.hex()))
            if cursor is not None:
                self._set_cursor(c, cursor[0], cursor[1])
        return meta.seq

    def cursor(self, name: str) -> int:
        row = self._one("SELECT value FROM cursors WHERE name = ?", (name,))
        return 0 if row is None else int(row[0])

    def set_cursor(self, name: str, value: int) -> None:
        with self.transaction() as c:
            self._set_cursor(c, name, value)

    @staticmethod
    def _set_cursor(c: sqlite3.Connection, name: str, value: int) -> None:
        c.execute("INSERT OR REPLACE INTO cursors(name, value) VALUES (?, ?)", (name, value))

    def _watermark(self, destination: str) -> int:
        if destination not in self.destinations:
            raise ValueError(f"unknown destination {destination!r} (store has {self.destinations})")
        row = self._one("SELECT watermark FROM delivery WHERE destination = ?", (destination,))
        return 0 if row is None else int(row[0])  # None: read-only, destination never used

    _PENDING_WHERE = (
        " WHERE o.seq > ? AND NOT EXISTS (SELECT 1 FROM delivery_marks m"
        " WHERE m.destination = ? AND m.seq = o.seq) ORDER BY o.seq LIMIT ?"
    )

    def pending(self, destination: str, limit: int, after_seq: int = 0) -> list[OutboxRow]:
        start = max(self._watermark(destination), after_seq)
        out: list[OutboxRow] = []
        while len(out) < limit:
            want = limit - len(out)
            rows = self._all(
                f"SELECT {_OUTBOX_COLS} FROM outbox o JOIN payloads p ON p.seq = o.seq"
                + self._PENDING_WHERE, (start, destination, want),
            )
            out += self._verified(rows)
            if len(rows) < want:
                break
            start = rows[-1][0]
        return out

    def _verified(self, rows: list[Any]) -> list[OutboxRow]:
        """OutboxRows whose payload matches its checksum; the others are quarantined once."""
        out = []
        for seq, id_, type_, topic, payload, created, period, checksum in rows:
            if hashlib.sha256(payload).digest() == checksum:
                out.append(OutboxRow(seq, id_, type_, topic, bytes(payload), created, period))
            elif not self.readonly and self._one(
                    "SELECT 1 FROM rejected WHERE seq = ? AND reason = ?",
                    (seq, _CORRUPT_REASON)) is None:
                self._quarantine(seq, id_)
        return out

    def _quarantine(self, seq: int, id_: str) -> None:
        """A payload whose checksum fails is never sent: done for every destination, counted."""
        now = int(time.time() * 1000)
        with self.transaction() as c:
            for d in self.destinations:
                c.execute("INSERT OR IGNORE INTO delivery_marks VALUES (?, ?)", (d, seq))
                c.execute("INSERT OR IGNORE INTO rejected VALUES (?, ?, ?, ?)",
                          (d, seq, _CORRUPT_REASON, now))
            self._add_counter(c, "corrupt_envelopes", 1)
            for d in self.destinations:
                self._advance(c, d)
        log.error("envelope %s (seq %d) is corrupt on disk (checksum mismatch): skipped", id_, seq)

    def _advance(self, c: sqlite3.Connection, destination: str) -> None:
        """Move the watermark up to just below the first seq still pending (Vector style)."""
        w = c.execute("SELECT watermark FROM delivery WHERE destination = ?",
                      (destination,)).fetchone()[0]
        row = c.execute("SELECT o.seq FROM outbox o" + self._PENDING_WHERE,
                        (w, destination, 1)).fetchone()
        new = row[0] - 1 if row else c.execute("SELECT next_seq - 1 FROM chain").fetchone()[0]
        if new > w:
            c.execute("UPDATE delivery SET watermark = ? WHERE destination = ?", (new, destination))
            c.execute("DELETE FROM delivery_marks WHERE destination = ? AND seq <= ?",
                      (destination, new))

    def advance_watermarks(self) -> None:
        """Re-derive every destination's watermark (after rows were deleted by retention)."""
        with self.transaction() as c:
            for d in self.destinations:
                self._advance(c, d)

    def mark_delivered(self, destination: str, seqs: Iterable[int]) -> None:
        w = self._watermark(destination)
        todo = sorted({int(s) for s in seqs if s > w})
        if not todo:
            return
        with self.transaction() as c:
            # Through outbox, so a seq that does not exist (never enqueued, pruned) is ignored.
            c.executemany(
                "INSERT OR IGNORE INTO delivery_marks(destination, seq)"
                " SELECT ?, seq FROM outbox WHERE seq = ?", [(destination, s) for s in todo],
            )
            top = next((s for s in reversed(todo)
                        if c.execute("SELECT 1 FROM outbox WHERE seq = ?", (s,)).fetchone()), None)
            if top is not None:
                c.execute(
                    "UPDATE delivery SET last_seq = max(coalesce(last_seq, 0), ?), last_ms = ?"
                    " WHERE destination = ?", (top, int(time.time() * 1000), destination),
                )
            self._advance(c, destination)

    def mark_rejected(self, destination: str, seq: int, reason: str) -> None:
        self._watermark(destination)
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM outbox WHERE seq = ?", (seq,)).fetchone() is None:
                return
            c.execute("INSERT OR IGNORE INTO delivery_marks VALUES (?, ?)", (destination, seq))
            c.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?)",
                      (destination, seq, reason, int(time.time() * 1000)))
            self._add_counter(c, "rejected_envelopes", 1)
            self._advance(c, destination)

    def rejected(self, destination: str) -> list[tuple[int, str, int]]:
        """Dead letters for a destination: (seq, reason, when in ms), oldest first."""
        return [tuple(r) for r in self._all(
            "SELECT seq, reason, ts_ms FROM rejected WHERE destination = ? ORDER BY seq",
            (destination,))]

    def backlog(self, destination: str) -> tuple[int, int | None]:
        w = self._watermark(destination)
        total = self._one("SELECT count(*) FROM outbox WHERE seq > ?", (w,))[0]
        done = self._one(
            "SELECT count(*) FROM delivery_marks m JOIN outbox o ON o.seq = m.seq"
            " WHERE m.destination = ? AND m.seq > ?", (destination, w))[0]
        oldest = self._one("SELECT o.created_ms FROM outbox o" + self._PENDING_WHERE,
                           (w, destination, 1))
        return int(total - done), None if oldest is None else int(oldest[0])

    def last_delivered(self, destination: str) -> tuple[int | None, int | None]:
        self._watermark(destination)
        row = self._one("SELECT last_seq, last_ms FROM delivery WHERE destination = ?",
                        (destination,))
        return (None, None) if row is None else (row[0], row[1])

    def envelopes(self, type: str, period_from: str | None = None,
                  period_to: str | None = None) -> list[OutboxRow]:
        sql = (f"SELECT {_OUTBOX_COLS} FROM outbox o JOIN payloads p ON p.seq = o.seq"
               " WHERE o.type = ?")
        params: list[Any] = [type]
        if period_from is not None:
            sql += " AND o.period >= ?"
            params.append(period_from)
        if period_to is not None:
            sql += " AND o.period <= ?"
            params.append(period_to)
        return self._verified(self._all(sql + " ORDER BY o.seq", params))

    # -- small state, counters, events --------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        row = self._one("SELECT value FROM state WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        with self.transaction() as c:
            self._set_state(c, key, value)

    @staticmethod
    def _set_state(c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (key, value))

    def add_counter(self, name: str, n: int = 1) -> None:
        with self.transaction() as c:
            self._add_counter(c, name, n)

    @staticmethod
    def _add_counter(c: sqlite3.Connection, name: str, n: int) -> None:
        c.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, n),
        )

    def counters(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._all("SELECT name, value FROM counters")}

    def add_event(self, kind: str, ts_ms: int, data: dict[str, Any]) -> int:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        with self.transaction() as c:
            rowid = c.execute("INSERT INTO events(kind, ts_ms, data) VALUES (?, ?, ?)",
                              (kind, ts_ms, text)).lastrowid
        assert rowid is not None
        return rowid

    def events(self, kind: str | None = None,
               since_ms: int | None = None) -> list[tuple[int, str, int, dict[str, Any]]]:
        sql, params = "SELECT id, kind, ts_ms, data FROM events WHERE 1", []
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if since_ms is not None:
            sql += " AND ts_ms >= ?"
            params.append(since_ms)
        rows = self._all(sql + " ORDER BY id", params)
        return [(int(i), str(k), int(t), json.loads(d)) for i, k, t, d in rows]

    def size_bytes(self) -> int:
        pages = self._one("PRAGMA page_count")[0] * self._one("PRAGMA page_size")[0]
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            return int(pages + wal.stat().st_size)
        except FileNotFoundError:
            return int(pages)

    def free_pages(self) -> int:
        return int(self._one("PRAGMA freelist_count")[0])

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it (after large deletes)."""
        self._all("PRAGMA wal_checkpoint(TRUNCATE)")

    def used_bytes(self) -> int:
        """Bytes in live pages (excludes free pages not yet given back and the WAL)."""
        count, free = self._one("PRAGMA page_count")[0], self._one("PRAGMA freelist_count")[0]
        return int((count - free) * self._one("PRAGMA page_size")[0])
