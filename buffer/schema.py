"""Opening the store's SQLite file: pragmas, integrity check, versioned migrations.

The schema version is `PRAGMA user_version`; `MIGRATIONS[i]` takes the file from version i to
i + 1 inside one transaction, so a crash mid-migration leaves the previous version intact.
Migrations run in a child process (`python -m buffer.migrate PATH`, buffer/migrate.py), only
when the file is behind: they are written with sqlite-utils, whose import would otherwise stay
in the daemon's memory for the life of the process.
A file that fails its integrity check is moved aside (never deleted) and a fresh one started;
what can still be read from it is salvaged (buffer/salvage.py): the chain head, so `seq` never
repeats, and every whole envelope not yet delivered everywhere, to be sent byte-identical.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger("buffer.schema")

ZERO_HASH = "0" * 64
BUSY_TIMEOUT_MS = 5000
# After a checkpoint the WAL is truncated to this, so a burst (pruning) does not pin disk space.
JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)


def _v1(db: sqlite_utils.Database) -> None:
    db["series"].create({"series_id": int, "meter": str, "point": str}, pk="series_id",
                        not_null={"meter", "point"})
    db["series"].create_index(["meter", "point"], unique=True)
    # AUTOINCREMENT (which sqlite-utils cannot declare) so a row id is never reused after
    # pruning empties the table: reuse would put new samples behind the "sealed_rowid" cursor.
    db.execute(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " series_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL, quality INTEGER NOT NULL)"
    )
    db["readings"].create_index(["series_id", "ts"])
    db["meter_status"].create(
        {"meter": str, "bus": str, "online": int, "last_good_ms": int, "last_error_ms": int,
         "last_error": str, "errors_total": int, "consecutive_failures": int},
        pk="meter",
    )
    # Envelope metadata apart from the payload, so scans for pending/backlog never touch
    # the (often overflow-page sized) payload bytes.
    db["outbox"].create(
        {"seq": int, "id": str, "type": str, "topic": str, "created_ms": int, "period": str,
         "checksum": bytes},
        pk="seq", not_null={"id", "type", "topic", "created_ms", "checksum"},
    )
    db["outbox"].create_index(["type", "period"])
    db["payloads"].create({"seq": int, "payload": bytes}, pk="seq", not_null={"payload"})
    db["chain"].create({"id": int, "next_seq": int, "head": str}, pk="id")
    db["chain"].insert({"id": 1, "next_seq": 1, "head": ZERO_HASH})
    # Per destination: every seq <= watermark is done (delivered, rejected or gone);
    # delivery_marks holds the few done seqs above it (out-of-order acks).
    db["delivery"].create(
        {"destination": str, "watermark": int, "last_seq": int, "last_ms": int},
        pk="destination", not_null={"watermark"},
    )
    db["delivery_marks"].create({"destination": str, "seq": int}, pk=("destination", "seq"))
    db["rejected"].create({"destination": str, "seq": int, "reason": str, "ts_ms": int},
                          pk=("destination", "seq"))
    db["cursors"].create({"name": str, "value": int}, pk="name", not_null={"value"})
    db["state"].create({"key": str, "value": str}, pk="key")
    db["counters"].create({"name": str, "value": int}, pk="name", not_null={"value"})
    db["events"].create({"id": int, "kind": str, "ts_ms": int, "data": str}, pk="id",
                        not_null={"kind", "ts_ms", "data"})
    db["events"].create_index(["kind", "ts_ms"])


def _v2(db: sqlite_utils.Database) -> None:
    """One row per meter poll instead of one per sample (the row format: buffer/polls.py).

    Each v1 reading becomes a one-point poll with the same id, its series a one-point layout
    with the same id, so the "sealed_rowid" cursor keeps pointing where it did.
    """
    db["layouts"].create({"layout_id": int, "meter": str, "points": str}, pk="layout_id",
                         not_null={"meter", "points"})
    db["layouts"].create_index(["meter", "points"], unique=True)
    # AUTOINCREMENT for the same reason as v1's readings table.
    db.execute(
        "CREATE TABLE polls (id INTEGER PRIMARY KEY AUTOINCREMENT, layout_id INTEGER NOT NULL,"
        " ts INTEGER NOT NULL, vals BLOB NOT NULL, quality BLOB, ts_delta BLOB)"
    )
    # (layout, ts) look-ups, filled in bulk behind the writer (buffer/readings.py says why);
    # WITHOUT ROWID, which sqlite-utils cannot declare, so an entry is stored once.
    db.execute(
        "CREATE TABLE poll_index (layout_id INTEGER NOT NULL, ts INTEGER NOT NULL,"
        " id INTEGER NOT NULL, PRIMARY KEY (layout_id, ts, id)) WITHOUT ROWID"
    )
    db.register_function(_points_json, name="points_json", deterministic=True)
    db.register_function(_f64, name="f64", deterministic=True)
    db.register_function(_quality_byte, name="quality_byte", deterministic=True)
    db.execute("INSERT INTO layouts(layout_id, meter, points)"
               " SELECT series_id, meter, points_json(point) FROM series")
    db.execute("INSERT INTO polls(id, layout_id, ts, vals, quality, ts_delta)"
               " SELECT id, series_id, ts, f64(value), CASE quality WHEN 0 THEN NULL"
               " ELSE quality_byte(quality) END, NULL FROM readings ORDER BY id")
    db.execute("INSERT INTO poll_index(layout_id, ts, id) SELECT layout_id, ts, id FROM polls")
    db.execute("INSERT OR REPLACE INTO cursors(name, value)"
               " SELECT 'indexed_poll_id', coalesce(max(id), 0) FROM polls")
    # Ids continue after the last one v1 ever gave out, also when pruning had emptied the table.
    seq = db.execute("SELECT max(seq) FROM sqlite_sequence WHERE name IN ('readings', 'polls')"
                     ).fetchone()[0]
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'polls'")
    if seq is not None:
        db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('polls', ?)", (seq,))
    db["readings"].drop()
    db["series"].drop()


def _points_json(point: str) -> str:
    return points_json([point])


def points_json(points: list[str]) -> str:
    """A layout's point names as stored in `layouts.points`."""
    return json.dumps(points, ensure_ascii=False, separators=(",", ":"))


def _f64(value: float | None) -> bytes:
    return struct.pack("<d", math.nan if value is None else value)


def _quality_byte(quality: int) -> bytes:
    return bytes([quality])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2]
VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Salvage:
    """What was moved aside and what could still be read from it."""

    moved_to: str
    reason: str
    next_seq: int | None  # the first seq the fresh store uses
    head: str | None  # the old chain's head, when it could be read
    salvaged: int = 0  # envelopes imported for delivery
    lost: tuple[tuple[int, int], ...] = ()  # seq ranges that could not be read, maybe unsent
    store_seq: int = 0  # highest seq found in the old file


class SchemaError(Exception):
    """The file is healthy but cannot be used by this version of the agent."""


class StoreError(Exception):
    """The store can no longer be trusted (I/O error, disk full, corruption): exit non-zero.

    Defined here, below both buffer.store and buffer.outbox, so neither imports the other's
    module for it; import it from buffer.store.
    """


def describe(path: Path, e: sqlite3.Error) -> str:
    """One line for a failed SQLite call that says what to do about it."""
    text = str(e)
    if "full" in text:
        return (f"store {path}: database or disk is full — free space on the data partition"
                " or lower the disk budget")
    if is_corruption(e):
        return f"store {path}: database is corrupt ({text}) — it is moved aside on restart"
    return f"store {path}: {type(e).__name__}: {text}"


def is_corruption(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    text = str(e)
    return "malformed" in text or "not a database" in text


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def configure(conn: sqlite3.Connection) -> None:
    # auto_vacuum only takes effect before the first table exists, so it comes first.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise SchemaError(f"cannot switch to WAL journal mode (got {mode!r})")
    # FULL: a commit survives a power cut, not only a process crash.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    # 512 KiB of page cache (default 2 MiB): the hot path appends and reads recent rows only,
    # and on a 256 MB gateway every resident MiB counts. bench/seal_store.py: the same CPU per
    # meter-poll as with 1 MiB (256 KiB cost +0.9 µs); the agent's RSS −0.5 MiB.
    conn.execute("PRAGMA cache_size = -512")


def integrity_problem(conn: sqlite3.Connection) -> str | None:
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows[:3])


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(found: int) -> None:
    if found > VERSION:
        raise SchemaError(
            f"database schema version {found} is newer than this agent knows ({VERSION})"
            " — install the newer agent or move the database aside"
        )


def migrate(path: Path, conn: sqlite3.Connection) -> int:
    """Bring the file to the newest version; returns the version it was at.

    The work is done by `python -m buffer.migrate PATH` in a child process; `conn` (idle, no
    transaction open) only reads the version before and after.
    """
    found = user_version(conn)
    check_version(found)
    if found == VERSION:
        return found
    # The package's own parent directory first, so the child imports this very `buffer`
    # whether the agent is installed or run from a source tree.
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "buffer.migrate", str(path)], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        if len(lines) > 1:  # not one of the faults the child words itself: keep its traceback
            log.error("schema migration of %s failed:\n%s", path, proc.stderr.rstrip())
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise SchemaError(f"schema migration from version {found} failed: {reason}")
    now = user_version(conn)
    if now != VERSION:
        raise SchemaError(f"schema migration from version {found} left version {now}, expected {VERSION}")
    log.info("store schema migrated from version %d to %d", found, now)
    return found


def move_aside(path: Path, reason: str, conn: sqlite3.Connection | None) -> Path:
    if conn is not None:
        conn.close()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    path.rename(target)
    # The WAL belongs with its file: named so that opening the moved copy still finds it.
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    log.error("store %s is corrupt (%s): moved aside to %s, starting a fresh store",
              path, reason, target.name)
    return target


def open_readonly(path: Path) -> sqlite3.Connection:
    """For inspection beside a running agent (status, export): no writes, no repair."""
    if not path.exists():
        raise SchemaError(f"no store at {path}")
    conn = connect(path, readonly=True)
    found = user_version(conn)
    if found == 0:
        # A running agent creates the file first and its schema a moment later (in a child
        # process); an inspector arriving in between must not call that a version mismatch.
        conn.close()
        raise SchemaError("the store has no schema yet — the agent is still creating it; try again shortly")
    if found != VERSION:
        conn.close()
        raise SchemaError(f"store schema version {found}, this agent reads {VERSION}")
    return conn


def open_database(path: Path, topic_of: Callable[[str], str] | None = None,
                  ) -> tuple[sqlite3.Connection, Salvage | None]:
    """Open (creating if needed), check and migrate; a corrupt file is moved aside first and
    what it still holds salvaged (then returned, else None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    moved: Path | None = None
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path)
        configure(conn)
        problem = integrity_problem(conn)
    except sqlite3.DatabaseError as e:
        if not is_corruption(e):
            if conn is not None:
                conn.close()
            raise
        problem = str(e)
    if problem is not None:
        moved = move_aside(path, problem, conn)
        conn = connect(path)
        configure(conn)
    assert conn is not None
    try:
        migrate(path, conn)
    except BaseException:
        conn.close()
        raise
    salvage = None if moved is None else record_salvage(conn, path, moved, problem or "", topic_of)
    return conn, salvage


def record_salvage(conn: sqlite3.Connection, path: Path, moved: Path, reason: str,
                   topic_of: Callable[[str], str] | None = None) -> Salvage:
    """Import what the moved-aside file still holds, resume the chain above it (and above the
    high-water mark), and leave a record status can report."""
    from buffer import salvage as salvaging
    from buffer.highwater import read_mark

    found = salvaging.read_moved(moved, topic_of)
    mark = read_mark(path)
    next_seq = max(found.next_seq or 0, found.high_seq + 1) if found.high_seq or found.next_seq else None
    head = found.head or found.high_head
    if mark is not None and (next_seq is None or mark.seq >= next_seq):
        next_seq, head = mark.seq + 1, mark.head
    salvage = Salvage(str(moved), reason, next_seq, head, len(found.rows), tuple(found.lost),
                      found.high_seq)
    seq = resume_seq(salvage)
    now = int(time.time() * 1000)
    info = json.dumps({"moved_to": salvage.moved_to, "reason": salvage.reason, "at_ms": now,
                       "resumed_seq": seq, "salvaged": salvage.salvaged,
                       "lost": [list(r) for r in salvage.lost]}, sort_keys=True)
    conn.execute("BEGIN IMMEDIATE")  # autocommit connection: one explicit transaction
    try:
        salvaging.import_rows(conn, found)
        conn.execute("UPDATE chain SET next_seq = ?, head = ? WHERE id = 1",
                     (seq, salvage.head or ZERO_HASH))
        conn.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('corrupt_db_moved', ?)",
                     (info,))
        conn.execute("INSERT INTO counters(name, value) VALUES ('corrupt_db_moved', 1)"
                     " ON CONFLICT(name) DO UPDATE SET value = value + 1")
        conn.execute("INSERT INTO events(kind, ts_ms, data) VALUES ('corrupt_db_moved', ?, ?)",
                     (now, info))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    lost = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in salvage.lost[:10]) or "none"
    log.error("fresh store started after corruption: %d unsent envelope(s) salvaged for delivery, "
              "unreadable seqs: %s; envelope seq resumes at %d", salvage.salvaged, lost, seq)
    return salvage


def resume_seq(salvage: Salvage) -> int:
    """The first seq of a fresh store replacing a corrupt one: never one already used.

    When the old chain head could not be read, the wall clock in milliseconds is a floor no
    earlier seq can have reached (the agent seals far fewer than 1000 envelopes a second).
    """
    if salvage.next_seq is not None:
        return salvage.next_seq
    return max(1, int(time.time() * 1000))
