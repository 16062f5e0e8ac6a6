"""The chain's high-water mark: the highest seq ever sealed, and its head, in a file of its own.

SQLite keeps the chain head with the envelopes, so whatever takes the store back in time — a
WAL lost after `kill -9`, a restored backup, a file copied from elsewhere — takes the head back
with it, and the next envelopes would reuse seqs the platform already holds with other bytes.
This file sits beside the store (`agent.db.highwater`), is rewritten after every commit that
seals envelopes (once per seal pass, not per sample: eMMC wear) and only ever moves up, so at
start the store can tell that its chain went backwards and continue above every seq it ever
published (Store: `reconcile`).

Written after the SQLite commit, never before: a crash in between leaves the mark behind the
store, which is harmless (the store is ahead, the mark catches up); a mark ahead of what was
committed would announce seqs as lost that never existed. The forwarder reads the outbox on
the same thread as the sealer, so nothing is published before its mark is on disk.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buffer.state import add_counter_in

if TYPE_CHECKING:
    from buffer.schema import Salvage
    from buffer.store import Store

log = logging.getLogger("buffer.highwater")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Mark:
    seq: int  # the highest seq sealed (0: none yet)
    head: str  # SHA-256 hex of that envelope's bytes


def mark_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".highwater")


def read_mark(db_path: Path) -> Mark | None:
    """The mark, or None when there is none (first start) or it cannot be read (logged)."""
    path = mark_path(db_path)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.error("high-water mark %s unreadable (%s): relying on the store's own chain head",
                  path, e.strerror)
        return None
    try:
        doc = json.loads(data) if len(data) <= _MAX_BYTES else None
        seq, head = doc["seq"], doc["head"]  # type: ignore[index]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 \
                or not isinstance(head, str) or not _HEX64.fullmatch(head):
            raise ValueError
    except (ValueError, TypeError, KeyError):
        log.error("high-water mark %s is damaged: relying on the store's own chain head", path)
        return None
    return Mark(seq, head)


def write_mark(db_path: Path, mark: Mark) -> None:
    """Raise the mark to `mark` (never lower it), durably: temp file, fsync, rename, fsync dir.

    Two processes may seal into one store (the daemon and `energy-agent enter`): a lock on a
    file beside it makes read-compare-replace one step, so the mark never moves down.
    """
    path = mark_path(db_path)
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        current = _quiet_read(path)
        if current is not None and current.seq > mark.seq:
            return
        if current == mark:
            return
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"seq": mark.seq, "head": mark.head}).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(lock_fd)  # releases the lock


def _quiet_read(path: Path) -> Mark | None:
    try:
        doc = json.loads(path.read_bytes()[:_MAX_BYTES])
        return Mark(int(doc["seq"]), str(doc["head"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


# -- at start: has the store gone back in time? -----------------------------------------------

REASONS = {
    "store-behind": "the store ends below the high-water mark (WAL lost, backup restored)",
    "head-differs": "the store's last envelope is not the one the high-water mark names",
    "store-salvaged": "the store was corrupt, moved aside and salvaged",
}


def reconcile(store: Store, salvage: Salvage | None) -> dict[str, Any] | None:
    """Compare the store's chain with the mark; when it went back (or was salvaged), move the
    chain above every seq ever sealed, record a `chain_reset` event for the sealer to sign
    (agent/protocol/sealer.py `seal_chain_records`) and return it; else None."""
    next_seq, head = store.outbox.chain_head()
    found = next_seq - 1
    mark = read_mark(store.path)
    reason = None
    if salvage is not None:
        reason = "store-salvaged"
    elif mark is not None and mark.seq > found:
        reason = "store-behind"
    elif mark is not None and mark.seq == found > 0 and mark.head != head:
        reason = "head-differs"
    if reason is None:
        if mark is None or mark.seq < found:
            write_mark(store.path, Mark(found, head))
        return None
    lost = [list(r) for r in salvage.lost] if salvage is not None else []
    # The highest seq the store (or the file it was salvaged from) still knew of.
    store_seq = salvage.store_seq if salvage is not None else found
    if mark is not None and mark.seq > store_seq:
        lost.append([store_seq + 1, mark.seq])
    new_seq, new_head = next_seq, head
    if mark is not None and mark.seq >= next_seq:
        new_seq, new_head = mark.seq + 1, mark.head
    now = int(time.time() * 1000)
    record = {"reason": reason, "previous_seq": new_seq - 1, "previous_head": new_head,
              "store_seq": store_seq, "lost": lost,
              "salvaged": salvage.salvaged if salvage is not None else 0,
              "resumed_seq": new_seq, "at_ms": now}
    with store.transaction() as c:
        c.execute("UPDATE chain SET next_seq = ?, head = ? WHERE id = 1", (new_seq, new_head))
        c.execute("INSERT INTO events(kind, ts_ms, data) VALUES ('chain_reset', ?, ?)",
                  (now, json.dumps(record, sort_keys=True, separators=(",", ":"))))
        add_counter_in(c, "chain_resets", 1)
    write_mark(store.path, Mark(new_seq - 1, new_head))
    gone = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in lost[:10]) or "none"
    log.error("store chain went backwards or was rebuilt (%s): store ends at seq %d, highest seq "
              "ever sealed %d; continuing at seq %d; seqs no longer held: %s — a signed `chain` "
              "envelope tells the platform", REASONS[reason], store_seq, new_seq - 1, new_seq, gone)
    return record
