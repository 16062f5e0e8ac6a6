"""Reading what is still readable from a store moved aside as corrupt (buffer/schema.py).

Every envelope in it was signed and chained before: one that can be read whole (its stored
SHA-256 matches) and was not delivered to every destination is imported into the fresh
store's outbox under its own seq, to be sent byte-identical and in seq order. Nothing is
trusted in bulk: each row is read on its own, anything that raises is skipped, and what could
not be read is reported as seq ranges.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

log = logging.getLogger("buffer.salvage")
# Seqs probed one by one between the lowest and highest found (a corrupt index page can hide
# rows that a direct look-up by seq still finds); beyond this the gap is reported as lost.
MAX_PROBES = 200_000
_ROW_COLS = "seq, id, type, topic, created_ms, period, checksum"


@dataclass
class Found:
    """What the moved-aside file still told us."""

    next_seq: int | None = None  # its chain table's next seq
    head: str | None = None  # its chain table's head
    high_seq: int = 0  # highest seq seen anywhere in it
    high_head: str | None = None  # SHA-256 of the highest envelope read whole
    rows: list[tuple[tuple[object, ...], bytes]] = field(default_factory=list)  # outbox row, payload
    delivered: dict[int, set[str]] = field(default_factory=dict)  # seq -> destinations done
    lost: list[tuple[int, int]] = field(default_factory=list)  # unreadable, maybe unsent
    unreadable: int = 0


def read_moved(path: Path, topic_of: Callable[[str], str] | None = None) -> Found:
    """`topic_of(type)`: where an envelope of `type` is published, for envelopes whose payload
    survived but whose outbox row did not (else the topic of any readable row is the model)."""
    found = Found()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        log.error("salvage: cannot open %s: %s", path, e)
        return found
    try:
        # A table whose root page lies past a truncated end makes the whole schema "malformed";
        # with writable_schema SQLite loads the schema anyway and the other tables stay readable.
        # (Read-only connection: nothing can be written through it.)
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA writable_schema = ON")
        _read(conn, found, topic_of)
    finally:
        conn.close()
    return found


def _read(conn: sqlite3.Connection, found: Found, topic_of: Callable[[str], str] | None) -> None:
    row = _one(conn, "SELECT next_seq, head FROM chain WHERE id = 1")
    if row is not None:
        found.next_seq, found.head = int(row[0]), str(row[1])
    watermarks: dict[str, int] = {}
    for dest, w in _scan(conn, "SELECT destination, watermark FROM delivery"):
        watermarks[str(dest)] = int(w)
    marks: dict[str, set[int]] = {}
    for dest, seq in _scan(conn, "SELECT destination, seq FROM delivery_marks"):
        marks.setdefault(str(dest), set()).add(int(seq))
    seqs: set[int] = set()
    for table in ("outbox", "payloads"):
        for order in ("", " DESC"):
            seqs.update(int(r[0]) for r in _scan(conn, f"SELECT seq FROM {table} ORDER BY seq{order}"))
    if seqs and max(seqs) - min(seqs) < MAX_PROBES:
        seqs.update(range(min(seqs), max(seqs) + 1))
    top = max([*seqs, (found.next_seq or 1) - 1])
    found.high_seq = top
    floor = min(watermarks.values()) if watermarks else 0  # all done below: pruned, not lost
    bad: list[int] = []
    for seq in sorted(seqs):
        done = {d for d in watermarks if seq <= watermarks[d] or seq in marks.get(d, ())}
        everywhere = bool(watermarks) and done == set(watermarks)
        meta = _one(conn, f"SELECT {_ROW_COLS} FROM outbox WHERE seq = ?", (seq,))
        data = _one(conn, "SELECT payload FROM payloads WHERE seq = ?", (seq,))
        whole = meta is not None and data is not None and \
            hashlib.sha256(bytes(data[0])).digest() == bytes(meta[6])  # type: ignore[arg-type]
        if meta is None and data is not None:
            topic_of = topic_of or _topic_model(conn)
            meta = _meta_from_payload(seq, bytes(data[0]), topic_of)  # type: ignore[arg-type]
            whole = meta is not None
        if whole:
            if seq == top:
                found.high_head = hashlib.sha256(bytes(data[0])).hexdigest()  # type: ignore[arg-type]
            if not everywhere:
                found.rows.append((tuple(meta), bytes(data[0])))  # type: ignore[arg-type]
                found.delivered[seq] = done
        elif seq > floor and not everywhere:
            bad.append(seq)
    # Above the last row found, up to the old chain head: gone without a trace.
    tail_from = max(max(seqs, default=0), floor) + 1
    found.lost = ranges(bad)
    if tail_from <= top:
        if found.lost and found.lost[-1][1] + 1 == tail_from:
            found.lost[-1] = (found.lost[-1][0], top)
        else:
            found.lost.append((tail_from, top))
    found.unreadable = len(bad) + max(0, top - tail_from + 1)


def _topic_model(conn: sqlite3.Connection) -> Callable[[str], str] | None:
    """Topics are {prefix}/{E}/{G}/up/{type}: any readable row shows the first four levels."""
    for (topic,) in _scan(conn, "SELECT topic FROM outbox"):
        base = str(topic).rsplit("/", 1)[0]
        return lambda type_: f"{base}/{type_}"
    return None


def _meta_from_payload(seq: int, payload: bytes,
                       topic_of: Callable[[str], str] | None) -> tuple[object, ...] | None:
    """An outbox row rebuilt from the envelope itself, when only its payload could be read.
    There is no stored checksum to compare with: the envelope must parse, name this seq, and
    be in canonical form (the platform verifies its signature, as for any envelope)."""
    if topic_of is None or len(payload) > 64 * 1024 * 1024:
        return None
    try:
        env = json.loads(payload)
        ok = isinstance(env, dict) and env.get("seq") == seq and isinstance(env.get("id"), str) \
            and isinstance(env.get("type"), str) and isinstance(env.get("created"), str)
        created = datetime.fromisoformat(env["created"]) if ok else None
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if created is None or not env["type"].isalpha():
        return None
    return (seq, env["id"], env["type"], topic_of(env["type"]), int(created.timestamp() * 1000),
            None, hashlib.sha256(payload).digest())


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """[3, 4, 5, 9] -> [(3, 5), (9, 9)]."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _one(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> tuple[object, ...] | None:
    try:
        return conn.execute(sql, params).fetchone()  # type: ignore[no-any-return]
    except sqlite3.Error:
        return None


def _scan(conn: sqlite3.Connection, sql: str) -> list[tuple[object, ...]]:
    """Rows up to the first one that raises (a corrupt page ends the scan, not the salvage)."""
    out: list[tuple[object, ...]] = []
    try:
        cur = conn.execute(sql)
        while True:
            try:
                row = cur.fetchone()
            except sqlite3.Error:
                break
            if row is None:
                break
            out.append(row)
    except sqlite3.Error:
        pass
    return out


def import_rows(conn: sqlite3.Connection, found: Found) -> int:
    """Put the readable, undelivered envelopes into the fresh store's outbox (inside the
    caller's transaction); returns how many."""
    for meta, payload in found.rows:
        seq = int(meta[0])  # type: ignore[call-overload]
        conn.execute(f"INSERT OR IGNORE INTO outbox({_ROW_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", meta)
        conn.execute("INSERT OR IGNORE INTO payloads(seq, payload) VALUES (?, ?)", (seq, payload))
        for dest in found.delivered.get(seq, ()):
            conn.execute("INSERT OR IGNORE INTO delivery_marks(destination, seq) VALUES (?, ?)",
                         (dest, seq))
    return len(found.rows)
