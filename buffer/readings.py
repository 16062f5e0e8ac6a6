"""The readings half of the store: one row per meter poll (the row format: buffer/polls.py),
read back in commit order (the sealer, tools) and by meter, point and time (accounting).

`Readings` works over the Store's connection and transactions (`store.readings`), like the outbox.

Why `poll_index` is filled behind the writer rather than being an index on polls(layout_id,
ts): such an index takes one entry per meter on every tick, each in a different B-tree page,
so every tick's commit would rewrite as many index pages as there are meters — for 100 meters
~400 KB of WAL a second, and twice the CPU of inserting the rows, which themselves take
~13 KB. Instead, rows after the cursor `indexed_poll_id` (fewer than INDEX_ROWS_PER_LAYOUT per
layout) are found by scanning the table's newest rows, and once there are that many they are
indexed in one statement inside the commit that adds the next tick: each index page is then
written about once per INDEX_ROWS_PER_LAYOUT entries.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain
from typing import TYPE_CHECKING, Any

from buffer import polls
from buffer.names import INDEXED_CURSOR
from buffer.polls import MAX_SPAN_MS, BadReading, Layout
from buffer.schema import StoreError, points_json
from drivers.base import Quality, Reading

if TYPE_CHECKING:
    from buffer.state import MeterStatus
    from buffer.store import Store

INDEX_ROWS_PER_LAYOUT = 64  # rows indexed at once: this many per meter

# Rows go in with multi-row INSERTs of these sizes (largest first): one statement costs ~25 %
# less per row than executemany, mostly because AUTOINCREMENT updates sqlite_sequence once per
# statement, not per row; a few fixed sizes keep the statement cache small.
_INSERT_SIZES = (64, 16, 4, 1)
_INSERT_STATUS = "INSERT OR REPLACE INTO meter_status VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_INDEXED = f"(SELECT coalesce(max(value), 0) FROM cursors WHERE name = '{INDEXED_CURSOR}')"
# One point of one layout, time-bounded: the indexed rows, then the newest rows not indexed yet.
# One statement, so a reader beside the writer sees one snapshot of both parts.
_POINT_COLS = "p.id, p.ts, substr(p.vals, ?1, 8), substr(p.quality, ?2, 1), substr(p.ts_delta, ?3, 2)"
_POINT_SQL = (
    f"SELECT {_POINT_COLS} FROM poll_index i JOIN polls p ON p.id = i.id"
    " WHERE i.layout_id = ?4 AND i.ts >= ?5 AND i.ts < ?6"
    f" UNION ALL SELECT {_POINT_COLS} FROM polls p"
    f" WHERE p.id > {_INDEXED} AND p.layout_id = ?4 AND p.ts >= ?5 AND p.ts < ?6"
)
_F64 = struct.Struct("<d").unpack
_QUALITIES = {int(q): q for q in Quality}


@lru_cache(maxsize=len(_INSERT_SIZES))
def _insert_sql(rows: int) -> str:
    return ("INSERT INTO polls(layout_id, ts, vals, quality, ts_delta) VALUES "
            + ",".join(["(?, ?, ?, ?, ?)"] * rows))


def _insert_polls(c: sqlite3.Connection, rows: Sequence[polls.Row]) -> None:
    i = 0
    for size in _INSERT_SIZES:
        sql = _insert_sql(size)
        while len(rows) - i >= size:
            c.execute(sql, list(chain.from_iterable(rows[i:i + size])))
            i += size


class Readings:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._layouts: dict[int, Layout] = {}
        self._layout_keys: dict[tuple[str, tuple[str, ...]], Layout] = {}
        self._latest: dict[str, Layout] = {}  # meter -> the layout add_readings tries first
        self._load_layouts()
        self._unindexed = 0
        if not self._store.readonly:
            self._unindexed = int(self._store.row(f"SELECT count(*) FROM polls WHERE id > {_INDEXED}")[0])

    def _load_layouts(self) -> None:
        """Layouts not cached yet (all of them at start; later, those another process added)."""
        newest = max(self._layouts, default=0)
        for lid, meter, points in self._store.rows(
                "SELECT layout_id, meter, points FROM layouts WHERE layout_id > ? ORDER BY layout_id", (newest,)):
            self._remember(Layout(lid, meter, tuple(json.loads(points))))

    def _remember(self, lay: Layout) -> None:
        self._layouts[lay.layout_id] = lay
        self._layout_keys[lay.key] = lay
        self._latest[lay.meter] = lay

    # -- writing ----------------------------------------------------------------------------

    def add_readings(self, rows: Sequence[Reading], statuses: Sequence[MeterStatus] = ()) -> None:
        """Commit one poll tick: the readings of many meters (each meter's points consecutive,
        in its point order) as one row per meter, and the meter statuses that changed."""
        self.add_encoded(self.encode_readings(rows), statuses)

    def encode_readings(self, rows: Sequence[Reading]) -> list[polls.Row]:
        """add_readings' first half, which needs nothing from the database: the poll rows of
        `rows` (many meters' readings, each meter's points consecutive)."""
        return self.encode_polls([rows])

    def encode_polls(self, polls_: Sequence[Sequence[Reading]]) -> list[polls.Row]:
        """encode_readings for samples given one sequence per meter poll (what the pollers hand
        over): a MeterPoll of a known layout becomes its row without a Reading made. Safe on
        another thread than the store's (the agent runs it on the event loop, where the
        readings were just made and are still in that core's cache; on the store thread it
        cost ~2.5x as much). It only reads the layout cache and sets single entries of it; a
        guess made stale meanwhile falls back to looking the layout up."""
        try:
            return polls.encode_polls(polls_, self._latest, self._layout_keys)
        except BadReading as e:
            raise StoreError(f"store {self._store.path}: {e}") from e

    def add_encoded(self, rows_out: list[polls.Row], statuses: Sequence[MeterStatus] = ()) -> None:
        """add_readings' second half: commit rows made by encode_readings, in one transaction."""
        new: dict[tuple[str, tuple[str, ...]], Layout] = {}
        with self._store.transaction() as c:
            if any(type(r[0]) is not int for r in rows_out):
                rows_out = [r if type(r[0]) is int else (self._layout_id(c, r[0], new), *r[1:])
                            for r in rows_out]
            _insert_polls(c, rows_out)
            if statuses:
                c.executemany(_INSERT_STATUS, [
                    (s.meter, s.bus, int(s.online), s.last_good_ms, s.last_error_ms, s.last_error,
                     s.errors_total, s.consecutive_failures) for s in statuses])
            unindexed = self._unindexed + len(rows_out)
            # Per meter in use rather than per layout: a v1 store brings a layout per point.
            if unindexed >= INDEX_ROWS_PER_LAYOUT * max(1, len(self._latest) + len(new)):
                self._index(c)
                unindexed = 0
        # Only after the commit: a rolled-back layout id must not stay cached.
        for lay in new.values():
            self._remember(lay)
        self._unindexed = unindexed

    def _layout_id(self, c: sqlite3.Connection, key: tuple[str, tuple[str, ...]],
                   new: dict[tuple[str, tuple[str, ...]], Layout]) -> int:
        lay = new.get(key) or self._layout_keys.get(key)
        if lay is None:
            meter, points = key
            text = points_json(list(points))
            row = c.execute("SELECT layout_id FROM layouts WHERE meter = ? AND points = ?",
                            (meter, text)).fetchone()
            lid = row[0] if row else c.execute("INSERT INTO layouts(meter, points) VALUES (?, ?)",
                                               (meter, text)).lastrowid
            assert lid is not None
            lay = new[key] = Layout(lid, meter, points)
        return lay.layout_id

    @staticmethod
    def _index(c: sqlite3.Connection) -> None:
        upto = c.execute("SELECT max(id) FROM polls").fetchone()[0]
        if upto is None:
            return
        # OR IGNORE: indexing a row twice must not stop the agent (it cannot happen while the
        # cursor moves in the same transaction, but a crash loop is the wrong way to find out).
        c.execute(f"INSERT OR IGNORE INTO poll_index(layout_id, ts, id) SELECT layout_id, ts, id FROM polls"
                  f" WHERE id > {_INDEXED} AND id <= ?", (upto,))
        c.execute("INSERT OR REPLACE INTO cursors(name, value) VALUES (?, ?)", (INDEXED_CURSOR, upto))

    def delete_polls(self, c: sqlite3.Connection, first_id: int, last_id: int,
                     before_ts: int | None = None) -> int:
        """Delete the rows first_id..last_id (only those with ts < before_ts, if given) and
        their index entries, inside the caller's transaction; returns how many samples went."""
        where = "id BETWEEN ? AND ?" + ("" if before_ts is None else " AND ts < ?")
        params: list[Any] = [first_id, last_id] if before_ts is None else [first_id, last_id, before_ts]
        groups = c.execute(f"SELECT layout_id, min(ts), max(ts), sum(length(vals)) FROM polls WHERE {where}"
                           " GROUP BY layout_id", params).fetchall()
        c.execute(f"DELETE FROM polls WHERE {where}", params)
        # Per layout and ts range: the index's own order, so no entry is searched for.
        c.executemany(f"DELETE FROM poll_index WHERE layout_id = ? AND ts BETWEEN ? AND ? AND {where}",
                      [(lid, lo, hi, *params) for lid, lo, hi, _ in groups])
        return sum(int(n) for _, _, _, n in groups) // 8

    # -- reading ----------------------------------------------------------------------------

    def layout(self, layout_id: int) -> Layout:
        """The layout of a poll row (KeyError if there is no such layout)."""
        if layout_id not in self._layouts:  # added by another process, or a read-only store
            self._load_layouts()
        return self._layouts[layout_id]

    def poll_rows_after(self, rowid: int, limit: int) -> list[tuple[int, int, int, bytes, bytes | None, bytes | None]]:
        """(id, layout_id, ts, vals, quality, ts_delta) of the first `limit` poll rows after
        `rowid`, oldest first: the sealer's input (decode with buffer.polls)."""
        return self._store.rows("SELECT id, layout_id, ts, vals, quality, ts_delta FROM polls WHERE id > ?"
                         " ORDER BY id LIMIT ?", (rowid, limit))

    def readings_after(self, rowid: int, limit: int) -> list[tuple[int, Reading]]:
        """The samples of the first `limit` poll rows after `rowid`, each with its row's id, in
        commit order (several samples share one id)."""
        out = []
        for rid, lid, ts, vals, quality, delta in self.poll_rows_after(rowid, limit):
            lay = self.layout(lid)
            times, values, qualities = polls.decode(lay.n, ts, vals, quality, delta)
            m = lay.meter
            out += [(rid, Reading(m, p, t, v, q))
                    for p, t, v, q in zip(lay.points, times, values, qualities, strict=True)]
        return out

    def readings_for(self, meter: str, point: str, start_ms: int, end_ms: int) -> list[Reading]:
        """The samples of one point with start_ms <= ts < end_ms, by ts, then commit order."""
        self._load_layouts()  # a read-only store sees layouts the writer added since
        found: list[tuple[int, int, float | None, int]] = []
        for lay in self._layouts.values():
            if lay.meter != meter or point not in lay.point_set:
                continue
            k = lay.points.index(point)
            rows = self._store.rows(_POINT_SQL, (8 * k + 1, k + 1, 2 * k + 1, lay.layout_id,
                                          start_ms - MAX_SPAN_MS, end_ms))
            for rid, ts, v, q, d in rows:
                if d:
                    ts += int.from_bytes(d, "little")
                if start_ms <= ts < end_ms:
                    value = _F64(v)[0]
                    found.append((ts, rid, None if value != value else value, q[0] if q else 0))
        found.sort()  # (ts, id) is unique: one sample of a point per row, so values never compare
        qualities = _QUALITIES
        return [Reading(meter, point, ts, v, qualities[q] if q in qualities else Quality(q))
                for ts, _, v, q in found]

    def newest_good_ms(self) -> dict[str, int]:
        """Per meter, the time of its newest GOOD sample among the newest poll rows: what the
        running daemon committed with its last ticks (a row per meter per tick), read without
        the daemon writing anything extra. Meters without a good sample there are absent."""
        self._load_layouts()
        span = 4 * max(len(self._layouts), 25)  # a few ticks' rows, whatever the site's size
        found: dict[str, int] = {}
        rows = self._store.rows("SELECT layout_id, ts, vals, quality, ts_delta FROM polls"
                         " WHERE id > (SELECT coalesce(max(id), 0) FROM polls) - ? ORDER BY id DESC", (span,))
        for lid, ts, vals, quality, delta in rows:
            lay = self._layouts.get(lid)
            if lay is None or lay.meter in found:
                continue
            times, _, qualities = polls.decode(lay.n, ts, vals, quality, delta)
            good = [t for t, q in zip(times, qualities, strict=True) if q == Quality.GOOD]
            if good:
                found[lay.meter] = max(good)
        return found

    def first_reading_ts(self) -> int | None:
        """The timestamp of the oldest stored poll row (the agent's first poll, until retention
        prunes it)."""
        row = self._store.row("SELECT ts FROM polls ORDER BY id LIMIT 1")
        return None if row is None else int(row[0])

    def last_reading_ts(self) -> int | None:
        """The timestamp of the most recently committed reading (not the largest timestamp:
        after a clock correction the newest sample is what tells the time)."""
        row = self._store.row("SELECT ts, ts_delta FROM polls ORDER BY id DESC LIMIT 1")
        if row is None:
            return None
        ts, delta = row
        return int(ts) + (int.from_bytes(delta[-2:], "little") if delta else 0)
