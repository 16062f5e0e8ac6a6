"""Schema migrations: v1 (one row per sample) to v2 (one row per meter poll) keeps every reading,
its id and the cursors; migrations run in a child process, so the daemon never imports
sqlite-utils; a failed migration is one line naming the file."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlite_utils

from agent.config import load_config
from agent.protocol.envelope import format_value
from agent.protocol.sealer import Sealer
from agent.protocol.signing import load_signer
from buffer import migrate, schema
from buffer.store import Store, StoreError
from drivers.base import Quality, Reading
from tests.agent_harness import write_site

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000_000
DECIMALS = {"import_active_energy": 2, "active_power": 3, "voltage_a": 1}


def v1_store(path: Path, readings: list[Reading], delete_ids: range = range(0)) -> list[tuple[int, Reading]]:
    """A store file as a v1 agent left it: readings in the `readings` table (one row each),
    `delete_ids` pruned afterwards. Returns the surviving (id, reading) pairs."""
    conn = schema.connect(path)
    schema.configure(conn)
    db = sqlite_utils.Database(conn)
    with db.atomic():
        schema.MIGRATIONS[0](db)
        conn.execute("PRAGMA user_version = 1")
    series: dict[tuple[str, str], int] = {}
    out = []
    with db.atomic():
        for r in readings:
            key = (r.meter, r.point)
            if key not in series:
                series[key] = conn.execute("INSERT INTO series(meter, point) VALUES (?, ?)", key).lastrowid
            rid = conn.execute("INSERT INTO readings(series_id, ts, value, quality) VALUES (?, ?, ?, ?)",
                               (series[key], r.ts, r.value, int(r.quality))).lastrowid
            out.append((rid, r))
        conn.executemany("DELETE FROM readings WHERE id = ?", [(i,) for i in delete_ids])
    conn.close()
    return [(i, r) for i, r in out if i not in delete_ids]


def site_readings(n: int) -> list[Reading]:
    out = []
    for i in range(n):
        t = T0 + i * 1000
        out += [Reading("main", "import_active_energy", t, 100.0 + i / 100),
                Reading("main", "active_power", t, -0.0004 if i % 4 == 0 else 12.5 + i),
                Reading("main", "voltage_a", t + 3, None if i % 5 == 0 else 230.1,
                        Quality.TIMEOUT if i % 5 == 0 else Quality.GOOD)]
    return out


def test_v1_store_migrates_with_its_ids_and_cursors(tmp_path: Path) -> None:
    cfg = load_config(write_site(tmp_path, 1883, 502))
    path = tmp_path / "agent.db"
    kept = v1_store(path, site_readings(10), delete_ids=range(1, 7))  # pruned: ids 1..6
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO cursors(name, value) VALUES ('sealed_rowid', 15)")
    conn.close()

    store = Store(path)
    assert store.conn.execute("PRAGMA user_version").fetchone() == (2,)
    assert store.readings.readings_after(0, 100) == kept  # the same ids, the same readings
    assert store.state.cursor("sealed_rowid") == 15
    assert store.readings.readings_for("main", "active_power", T0, T0 + 5000) == [
        r for i, r in kept if r.point == "active_power" and r.ts < T0 + 5000]
    assert store.readings.last_reading_ts() == kept[-1][1].ts
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "readings" not in tables and "series" not in tables
    assert store.free_pages() == 0  # what the v1 tables held is given back at once

    # Sealing resumes right after the cursor: exactly the v1 rows 16..30, formatted as before.
    sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file), clock=lambda: T0 / 1000 + 60)
    assert sealer.seal_readings() == 1
    (row,) = store.outbox.pending("mqtt", 10)
    samples = json.loads(row.payload)["body"]["samples"]
    assert samples == [[r.meter, r.point, r.ts, format_value(r.value, DECIMALS[r.point]), int(r.quality)]
                       for i, r in kept if i > 15]
    assert store.state.cursor("sealed_rowid") == 30

    # New polls continue the id sequence, one row per meter poll now.
    store.readings.add_readings([Reading("main", p, T0 + 99_000, 1.0) for p in DECIMALS])
    assert store.conn.execute("SELECT id, length(vals) FROM polls ORDER BY id DESC LIMIT 1").fetchone() == (31, 24)
    store.close()


def test_ids_continue_after_a_v1_table_pruning_had_emptied(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    assert v1_store(path, site_readings(4), delete_ids=range(1, 13)) == []
    store = Store(path)
    store.readings.add_readings([Reading("main", "voltage_a", T0, 230.0)])
    assert [i for i, _ in store.readings.readings_after(0, 10)] == [13]  # never an id a sealed row had
    store.close()


def test_fresh_store_leaves_sqlite_utils_out_of_the_process(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from buffer.store import Store\n"
        "from drivers.base import Reading\n"
        f"s = Store({str(tmp_path / 'fresh.db')!r})\n"
        "s.readings.add_readings([Reading('m', 'p', 1, 1.0)])\n"
        "s.close()\n"
        f"s = Store({str(tmp_path / 'fresh.db')!r})\n"
        "print(s.conn.execute('PRAGMA user_version').fetchone()[0], len(s.readings.readings_after(0, 9)))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('sqlite_utils', 'click', 'pluggy'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [f"{schema.VERSION} 1", "[]"], out.stderr


def test_failed_migration_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    v1_store(path, site_readings(2))
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE series")  # a v1 file the v2 migration cannot read
    conn.close()
    with pytest.raises(StoreError) as e:
        Store(path)
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    assert text.startswith(f"store {path}: schema migration from version 1 failed: ") and "series" in text
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)  # rolled back whole
    assert conn.execute("SELECT count(*) FROM readings").fetchone() == (6,)
    conn.close()


def test_unforeseen_migration_failure_keeps_its_traceback_in_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
                    "echo '  File \"x.py\", line 1' >&2\necho 'RuntimeError: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(schema.sys, "executable", str(fake))
    with caplog.at_level(logging.ERROR, logger="buffer.schema"), pytest.raises(StoreError) as e:
        Store(tmp_path / "agent.db")
    assert str(e.value).endswith("failed: RuntimeError: boom") and "\n" not in str(e.value)
    assert any("Traceback" in m for m in caplog.messages)


def test_a_migration_that_read_the_version_before_another_finished_does_nothing_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.db"
    Store(path).close()  # another process migrated it to the newest version meanwhile
    conn = schema.connect(path)
    stale = [0]  # ...after this one read the version as 0
    real = schema.user_version
    monkeypatch.setattr(schema, "user_version", lambda c: stale.pop() if stale else real(c))
    assert migrate.migrate(conn) == 0
    assert real(conn) == schema.VERSION
    conn.close()
    store = Store(path)
    store.readings.add_readings([Reading("m", "p", T0, 1.0)])
    assert len(store.readings.readings_after(0, 10)) == 1
    store.close()
