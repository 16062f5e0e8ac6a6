"""The durable store: readings, the signed envelope outbox with per-destination delivery, state.

SQLite is the only durable queue. A reading or envelope exists once its transaction commits
(WAL, synchronous=FULL). One connection, used from one thread at a time (the app runs every
store call in a single-thread executor); the object is not thread-safe and need not be.
Any SQLite failure becomes StoreError: the app must stop rather than poll into the void.

Readings (one row per meter poll) live in buffer/readings.py, the outbox, the envelope chain
and delivery in buffer/outbox.py: mixins of Store, to keep each module readable; import all of
it from here.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buffer import schema
from buffer.outbox import EnvelopeBuilder, EnvelopeMeta, Outbox, OutboxRow, SeqConflict
from buffer.readings import Readings
from buffer.schema import StoreError

__all__ = ["EnvelopeBuilder", "EnvelopeMeta", "MeterStatus", "OutboxRow", "SeqConflict", "Store",
           "StoreError"]

log = logging.getLogger("buffer.store")


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


class Store(Readings, Outbox):
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
        self._init_readings()

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
            raise StoreError(schema.describe(self.path, e)) from e
        try:
            yield c
            c.execute("COMMIT")
        except BaseException as e:
            if c.in_transaction:
                with suppress(sqlite3.Error):  # the original error is what matters
                    c.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(schema.describe(self.path, e)) from e
            raise

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(schema.describe(self.path, e)) from e

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    # -- meter health -------------------------------------------------------------------------

    def meter_statuses(self) -> list[MeterStatus]:
        rows = self._all("SELECT * FROM meter_status ORDER BY meter")
        return [MeterStatus(m, b, bool(o), g, e_ms, e, n, cf) for m, b, o, g, e_ms, e, n, cf in rows]

    # -- cursors -----------------------------------------------------------------------------

    def cursor(self, name: str, default: int = 0) -> int:
        row = self._one("SELECT value FROM cursors WHERE name = ?", (name,))
        return default if row is None else int(row[0])

    def set_cursor(self, name: str, value: int) -> None:
        with self.transaction() as c:
            self._set_cursor(c, name, value)

    @staticmethod
    def _set_cursor(c: sqlite3.Connection, name: str, value: int) -> None:
        c.execute("INSERT OR REPLACE INTO cursors(name, value) VALUES (?, ?)", (name, value))

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

    def give_back_pages(self, pages: int) -> None:
        """Return up to `pages` free pages to the filesystem (incremental vacuum), committed
        on its own. Through executescript: sqlite3 steps a statement that has no result
        columns once, and each step of incremental_vacuum frees a single page."""
        if self._conn.in_transaction:
            raise StoreError(f"store {self.path}: give_back_pages inside a transaction")
        try:
            self._conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        except sqlite3.Error as e:
            raise StoreError(schema.describe(self.path, e)) from e

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it (after large deletes)."""
        self._all("PRAGMA wal_checkpoint(TRUNCATE)")

    def used_bytes(self) -> int:
        """Bytes in live pages (excludes free pages not yet given back and the WAL)."""
        count, free = self._one("PRAGMA page_count")[0], self._one("PRAGMA freelist_count")[0]
        return int((count - free) * self._one("PRAGMA page_size")[0])
