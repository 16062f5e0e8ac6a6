"""Runs the store's schema migrations: `python -m buffer.migrate PATH`.

A child process of the agent (buffer/schema.py starts it only when the file is behind), so that
sqlite-utils and what it imports (click, dateutil, pluggy, tabulate: ~3.5 MiB of RSS that is
never given back) live and die with the child, not with a daemon that runs for years.

Exit status 0: the file is at the newest version. Otherwise one line on stderr says why, for
the parent to put in its error (a traceback only for faults nobody foresaw).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from buffer import schema


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to the newest version, one transaction per step; returns the version it
    was at. Safe against another process migrating the same file at the same time: each step
    re-reads the version under the write lock."""
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    found = schema.user_version(conn)
    schema.check_version(found)
    for version in range(found, schema.VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema.user_version(conn) == version:
                with db.atomic():  # a savepoint inside the transaction above
                    schema.MIGRATIONS[version](db)
                conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return found


def give_back(conn: sqlite3.Connection) -> None:
    """Return the pages the old tables left free to the filesystem now, not at the first
    retention pass: converting a store briefly needs room for both forms of its readings."""
    # executescript steps it to the end (execute would free one page: see Store.give_back_pages).
    conn.executescript("PRAGMA incremental_vacuum;")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m buffer.migrate PATH", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        conn = schema.connect(path)
        try:
            schema.configure(conn)
            if migrate(conn) > 0:
                give_back(conn)
        finally:
            conn.close()
    except schema.SchemaError as e:
        print(e, file=sys.stderr)
        return 1
    except sqlite3.Error as e:
        print(schema.describe(path, e).removeprefix(f"store {path}: "), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
