"""Small state beside the readings and the outbox: cursors, key/values, counters, events and
meter health — all in the store's one file, all through its connection and transactions."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buffer.store import Store


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


class State:
    def __init__(self, store: Store) -> None:
        self._store = store

    # -- cursors -----------------------------------------------------------------------------

    def cursor(self, name: str, default: int = 0) -> int:
        row = self._store.row("SELECT value FROM cursors WHERE name = ?", (name,))
        return default if row is None else int(row[0])

    def set_cursor(self, name: str, value: int) -> None:
        with self._store.transaction() as c:
            set_cursor_in(c, name, value)

    # -- key/values ----------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self._store.row("SELECT value FROM state WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        with self._store.transaction() as c:
            set_state_in(c, key, value)

    # -- counters and events -------------------------------------------------------------------

    def add_counter(self, name: str, n: int = 1) -> None:
        with self._store.transaction() as c:
            add_counter_in(c, name, n)

    def counters(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._store.rows("SELECT name, value FROM counters")}

    def add_event(self, kind: str, ts_ms: int, data: dict[str, Any]) -> int:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        with self._store.transaction() as c:
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
        rows = self._store.rows(sql + " ORDER BY id", params)
        return [(int(i), str(k), int(t), json.loads(d)) for i, k, t, d in rows]

    # -- meter health ----------------------------------------------------------------------------

    def meter_statuses(self) -> list[MeterStatus]:
        rows = self._store.rows("SELECT * FROM meter_status ORDER BY meter")
        return [MeterStatus(m, b, bool(o), g, e_ms, e, n, cf) for m, b, o, g, e_ms, e, n, cf in rows]


# Inside a transaction another part of the store has open (the outbox's, the readings').

def set_cursor_in(c: sqlite3.Connection, name: str, value: int) -> None:
    c.execute("INSERT OR REPLACE INTO cursors(name, value) VALUES (?, ?)", (name, value))


def set_state_in(c: sqlite3.Connection, key: str, value: str) -> None:
    c.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (key, value))


def add_counter_in(c: sqlite3.Connection, name: str, n: int) -> None:
    c.execute(
        "INSERT INTO counters(name, value) VALUES (?, ?)"
        " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, n),
    )
