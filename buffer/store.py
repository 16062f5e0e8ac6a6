"""The durable store: one SQLite file, one connection, one transaction helper — and the parts
that work over it: `outbox` (the signed envelope chain and per-destination delivery,
buffer/outbox.py), `readings` (one row per meter poll, buffer/readings.py) and `state`
(cursors, counters, events, meter health, buffer/state.py).

SQLite is the only durable queue. A reading or envelope exists once its transaction commits
(WAL, synchronous=FULL). One connection, used from one thread at a time (the app runs every
store call on its single store thread); the object is not thread-safe and need not be.
Any SQLite failure becomes StoreError: the app must stop rather than poll into the void.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from buffer import names, schema
from buffer.outbox import EnvelopeBuilder, EnvelopeMeta, Outbox, OutboxRow
from buffer.readings import Readings
from buffer.schema import StoreError
from buffer.state import MeterStatus, State

__all__ = ["EnvelopeBuilder", "EnvelopeMeta", "MeterStatus", "OutboxRow", "Store", "StoreError"]

log = logging.getLogger("buffer.store")


class Store:
    ZERO_HASH = schema.ZERO_HASH

    def __init__(self, path: str | Path, destinations: Sequence[str] = (names.MQTT,),
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
        self.state = State(self)
        self.outbox = Outbox(self)
        self.readings = Readings(self)

    def close(self) -> None:
        self._conn.close()

    # -- the core the parts share ----------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """The raw connection, for inspection (tests, tools); the parts go through
        `transaction`, `rows` and `row`."""
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

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of a read outside a transaction; SQLite errors become StoreError."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(schema.describe(self.path, e)) from e

    def row(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    # -- space ---------------------------------------------------------------------------------

    def size_bytes(self) -> int:
        pages = self.row("PRAGMA page_count")[0] * self.row("PRAGMA page_size")[0]
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            return int(pages + wal.stat().st_size)
        except FileNotFoundError:
            return int(pages)

    def free_pages(self) -> int:
        return int(self.row("PRAGMA freelist_count")[0])

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
        self.rows("PRAGMA wal_checkpoint(TRUNCATE)")

    def used_bytes(self) -> int:
        """Bytes in live pages (excludes free pages not yet given back and the WAL)."""
        count, free = self.row("PRAGMA page_count")[0], self.row("PRAGMA freelist_count")[0]
        return int((count - free) * self.row("PRAGMA page_size")[0])
