"""buffer.store against real SQLite files."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from buffer import schema
from buffer.store import EnvelopeMeta, MeterStatus, OutboxRow, SeqConflict, Store, StoreError
from drivers.base import Quality, Reading

T0 = 1_763_700_000_000


def meta(seq: int, type: str = "readings", period: str | None = None,
         created_ms: int = T0) -> EnvelopeMeta:
    return EnvelopeMeta(seq, f"E-G-{seq}", type, f"energy/E/G/up/{type}", created_ms, period)


def put(store: Store, n: int, type: str = "readings", period: str | None = None) -> list[bytes]:
    """Enqueue n envelopes the way the sealer does: seq and prev from chain_head()."""
    payloads = []
    for _ in range(n):
        seq, prev = store.chain_head()
        payload = f'{{"seq":{seq},"prev":"{prev}"}}'.encode()
        store.enqueue(payload, meta(seq, type, period))
        payloads.append(payload)
    return payloads


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "sub" / "agent.db", ("mqtt", "https"))
    yield s
    s.close()


def test_readings_round_trip_in_commit_order(store: Store) -> None:
    rows = [Reading("m1", "e", T0, 12345.67), Reading("m1", "p", T0, -1.5),
            Reading("m2", "e", T0 - 5, None, Quality.TIMEOUT)]
    store.add_readings(rows)
    store.add_readings([Reading("m1", "e", T0 + 60_000, 12346.0)])
    got = store.readings_after(0, 100)
    assert [r for _, r in got] == [*rows, Reading("m1", "e", T0 + 60_000, 12346.0)]
    ids = [i for i, _ in got]
    assert ids == sorted(ids)
    assert [r for _, r in store.readings_after(ids[1], 2)] == [rows[2], got[3][1]]
    assert store.last_reading_ts() == T0 + 60_000


def test_readings_for_boundaries(store: Store) -> None:
    store.add_readings([Reading("m", "e", T0 + i * 1000, float(i)) for i in (3, 0, 2, 1)])
    store.add_readings([Reading("m", "other", T0 + 1000, 9.0)])
    got = store.readings_for("m", "e", T0, T0 + 2000)
    assert [r.value for r in got] == [0.0, 1.0]  # start inclusive, end exclusive, by ts
    assert [r.ts for r in store.readings_for("m", "e", T0 + 1, T0 + 3001)] == [T0 + 1000,
                                                                              T0 + 2000,
                                                                              T0 + 3000]
    assert store.readings_for("m", "nope", 0, 2 * T0) == []


def test_statuses_committed_with_readings(store: Store) -> None:
    st = MeterStatus("m1", "bus1", False, T0, T0 + 5, "no reply", 7, 3)
    store.add_readings([Reading("m1", "e", T0, 1.0)], [st])
    assert store.meter_statuses() == [st]
    st2 = MeterStatus("m1", "bus1", True, T0 + 9, None, None, 7, 0)
    store.add_readings([], [st2])
    assert store.meter_statuses() == [st2]


def test_failed_batch_leaves_nothing_and_no_stale_series(store: Store) -> None:
    bad = [Reading("new", "p", T0, 1.0), Reading("new", "q", T0, object())]  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.add_readings(bad)
    assert store.readings_after(0, 10) == []
    store.add_readings([Reading("new", "p", T0, 2.0)])  # series cache not poisoned
    assert [r.value for r in store.readings_for("new", "p", 0, 2 * T0)] == [2.0]


def test_chain_head_enqueue_and_continuity_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    s = Store(path)
    assert s.chain_head() == (1, Store.ZERO_HASH)
    payloads = put(s, 3)
    assert s.chain_head() == (4, hashlib.sha256(payloads[-1]).hexdigest())
    s.close()
    s = Store(path)
    assert s.chain_head() == (4, hashlib.sha256(payloads[-1]).hexdigest())
    assert [r.payload for r in s.pending("mqtt", 10)] == payloads
    s.close()


def test_enqueue_wrong_seq_fails_and_changes_nothing(store: Store) -> None:
    put(store, 2)
    head = store.chain_head()
    for seq in (1, 2, 4):
        with pytest.raises(SeqConflict, match="expected 3"):
            store.enqueue(b"x", meta(seq), ("sealed_rowid", 99))
    assert store.chain_head() == head
    assert store.cursor("sealed_rowid") == 0
    assert [r.seq for r in store.pending("mqtt", 10)] == [1, 2]


def test_enqueue_sets_cursor_atomically(store: Store) -> None:
    assert store.cursor("sealed_rowid") == 0
    store.enqueue(b"a", meta(1), ("sealed_rowid", 42))
    assert store.cursor("sealed_rowid") == 42
    store.set_cursor("other", 7)
    assert store.cursor("other") == 7


def test_pending_rows_and_after_seq(store: Store) -> None:
    store.enqueue(b"p1", meta(1, "daily", "2026-11-21", T0 + 1))
    put(store, 3)
    rows = store.pending("mqtt", 2)
    assert rows[0] == OutboxRow(1, "E-G-1", "daily", "energy/E/G/up/daily", b"p1", T0 + 1,
                                "2026-11-21")
    assert [r.seq for r in rows] == [1, 2]
    assert [r.seq for r in store.pending("mqtt", 10, after_seq=2)] == [3, 4]


def test_destinations_are_independent(store: Store) -> None:
    put(store, 5)
    store.mark_delivered("mqtt", [1, 2, 3])
    assert [r.seq for r in store.pending("mqtt", 10)] == [4, 5]
    assert [r.seq for r in store.pending("https", 10)] == [1, 2, 3, 4, 5]
    assert store.backlog("mqtt") == (2, T0)
    assert store.backlog("https") == (5, T0)
    assert store.last_delivered("mqtt")[0] == 3
    assert store.last_delivered("https") == (None, None)
    with pytest.raises(ValueError, match="unknown destination"):
        store.pending("ftp", 1)


def test_out_of_order_delivery(tmp_path: Path) -> None:
    s = Store(tmp_path / "o.db")
    put(s, 6)
    s.mark_delivered("mqtt", [2, 4, 5])
    assert [r.seq for r in s.pending("mqtt", 10)] == [1, 3, 6]
    assert s.backlog("mqtt")[0] == 3
    assert s.last_delivered("mqtt")[0] == 5
    s.mark_delivered("mqtt", [1])
    assert [r.seq for r in s.pending("mqtt", 10)] == [3, 6]
    wm = s.conn.execute("SELECT watermark FROM delivery WHERE destination='mqtt'").fetchone()
    assert wm == (2,)  # only over contiguous acks
    s.mark_delivered("mqtt", [3, 99])  # 99 was never enqueued: ignored
    assert [r.seq for r in s.pending("mqtt", 10)] == [6]
    assert s.conn.execute("SELECT watermark FROM delivery WHERE destination='mqtt'").fetchone() \
        == (5,)
    assert s.conn.execute("SELECT count(*) FROM delivery_marks").fetchone() == (0,)
    s.close()
    s = Store(tmp_path / "o.db")
    assert [r.seq for r in s.pending("mqtt", 10)] == [6]
    assert s.last_delivered("mqtt")[0] == 5
    s.close()


def test_rejected_never_pending_again(store: Store) -> None:
    put(store, 3)
    store.mark_rejected("mqtt", 2, "schema error")
    assert [r.seq for r in store.pending("mqtt", 10)] == [1, 3]
    store.mark_delivered("mqtt", [1, 3])
    assert store.pending("mqtt", 10) == []
    assert store.rejected("mqtt")[0][:2] == (2, "schema error")
    assert store.counters()["rejected_envelopes"] == 1
    assert [r.seq for r in store.pending("https", 10)] == [1, 2, 3]
    assert [r.seq for r in store.envelopes("readings")] == [1, 2, 3]  # kept


def test_requeued_dead_letter_is_pending_again_alone(store: Store) -> None:
    payloads = put(store, 5)
    store.mark_delivered("mqtt", [1, 2])
    store.mark_rejected("mqtt", 3, "too large")
    store.mark_delivered("mqtt", [4, 5])
    assert store.pending("mqtt", 10) == [] and store._watermark("mqtt") == 5
    assert store.requeue("mqtt", [3, 4, 99]) == [3]  # 4 was delivered, 99 never existed
    pending = store.pending("mqtt", 10)
    assert [r.seq for r in pending] == [3] and pending[0].payload == payloads[2]  # byte-identical
    assert store.backlog("mqtt")[0] == 1 and store.rejected("mqtt") == []
    assert store.pending("https", 10)[0].seq == 1  # another destination is untouched
    store.mark_delivered("mqtt", [3])
    assert store.pending("mqtt", 10) == [] and store._watermark("mqtt") == 5
    assert store.requeue("mqtt", [3]) == []  # delivered now: nothing to requeue


def test_corrupt_payload_skipped_and_counted(store: Store, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    put(store, 3)
    raw = sqlite3.connect(store.path)
    (payload,) = raw.execute("SELECT payload FROM payloads WHERE seq = 2").fetchone()
    flipped = bytes([payload[0] ^ 0x01]) + payload[1:]
    with raw:
        raw.execute("UPDATE payloads SET payload = ? WHERE seq = 2", (flipped,))
    raw.close()
    assert [r.seq for r in store.pending("mqtt", 10)] == [1, 3]
    assert [r.seq for r in store.pending("mqtt", 10)] == [1, 3]
    assert [r.seq for r in store.pending("https", 10)] == [1, 3]
    assert [r.seq for r in store.envelopes("readings")] == [1, 3]
    assert store.counters()["corrupt_envelopes"] == 1
    assert sum("E-G-2" in m for m in caplog.messages) == 1
    assert store.requeue("mqtt", [2]) == []  # a corrupt envelope is never sent
    assert store.backlog("mqtt")[0] == 2
    store.mark_delivered("mqtt", [1, 3])
    assert store.backlog("mqtt") == (0, None)


def test_envelopes_by_type_and_period(store: Store) -> None:
    for i, day in enumerate(["2026-11-20", "2026-11-21", "2026-11-22"], start=1):
        store.enqueue(day.encode(), meta(i, "daily", day))
    store.enqueue(b"m", meta(4, "monthly", "2026-11"))
    assert [r.period for r in store.envelopes("daily")] == ["2026-11-20", "2026-11-21",
                                                            "2026-11-22"]
    assert [r.period for r in store.envelopes("daily", "2026-11-21", "2026-11-21")] \
        == ["2026-11-21"]
    assert [r.period for r in store.envelopes("daily", "2026-11-21")] == ["2026-11-21",
                                                                          "2026-11-22"]
    assert [r.payload for r in store.envelopes("monthly", None, "2026-12")] == [b"m"]
    assert store.envelopes("daily", "2026-12-01") == []


def test_sealed_periods_from_the_index_alone(store: Store) -> None:
    days = ["2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22"]
    for i, day in enumerate(days, start=1):
        store.enqueue(f"{day}-{i}".encode(), meta(i, "daily", day))
    store.enqueue(b"again", meta(5, "daily", "2026-11-21"))  # a period sealed twice counts once
    store.enqueue(b"i", meta(6, "interval", "2026-11-21T10:15"))
    assert store.sealed_periods("daily", "2026-11-20", "2026-11-21") == {"2026-11-20",
                                                                        "2026-11-21"}
    assert store.sealed_periods("daily", "2026-11-23", "2026-12-31") == set()
    assert store.sealed_periods("interval", "2026-11-21T00:00", "2026-11-21T23:45") == {
        "2026-11-21T10:15"}
    assert store.sealed_periods("monthly", "2026-11", "2026-11") == set()
    # No payload is read: the answer stands without the payload rows, and the plan only
    # walks the (type, period) index.
    plan = " ".join(r[3] for r in store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT DISTINCT o.period FROM outbox o"
        " WHERE o.type = ? AND o.period BETWEEN ? AND ?", ("daily", "a", "b")))
    assert "COVERING INDEX" in plan and "payloads" not in plan, plan
    with store.transaction() as c:
        c.execute("DELETE FROM payloads")
    assert store.sealed_periods("daily", "2026-11-19", "2026-11-22") == set(days)


def test_sealed_periods_skip_a_quarantined_envelope(store: Store) -> None:
    store.enqueue(b"d20", meta(1, "daily", "2026-11-20"))
    store.enqueue(b"d21", meta(2, "daily", "2026-11-21"))
    with store.transaction() as c:
        c.execute("UPDATE payloads SET payload = ? WHERE seq = 2", (b"d2X",))
    assert store.sealed_periods("daily", "2026-11-01", "2026-11-30") == {"2026-11-20",
                                                                        "2026-11-21"}
    store.pending("mqtt", 10)  # finds the checksum mismatch and quarantines seq 2
    # Never sent, so the day must be sealed again.
    assert store.sealed_periods("daily", "2026-11-01", "2026-11-30") == {"2026-11-20"}


def test_cursor_default_when_absent(store: Store) -> None:
    assert store.cursor("summarised_ts") == 0
    assert store.cursor("summarised_ts", default=-1) == -1
    store.set_cursor("summarised_ts", 5)
    assert store.cursor("summarised_ts", default=-1) == 5


def test_state_counters_events(store: Store) -> None:
    assert store.get_state("k") is None
    store.set_state("k", "v1")
    store.set_state("k", "v2")
    assert store.get_state("k") == "v2"
    store.add_counter("dropped_envelopes")
    store.add_counter("dropped_envelopes", 4)
    assert store.counters() == {"dropped_envelopes": 5}
    a = store.add_event("meter_replaced", T0, {"meter": "m1", "old": "1.5"})
    b = store.add_event("clock_jump", T0 + 10, {"delta_ms": -3600000})
    assert b > a
    assert store.events() == [(a, "meter_replaced", T0, {"meter": "m1", "old": "1.5"}),
                              (b, "clock_jump", T0 + 10, {"delta_ms": -3600000})]
    assert [e[0] for e in store.events("clock_jump")] == [b]
    assert [e[0] for e in store.events(since_ms=T0 + 1)] == [b]


def test_size_bytes_counts_wal(store: Store) -> None:
    before = store.size_bytes()
    store.add_readings([Reading("m", "e", T0 + i, float(i)) for i in range(20_000)])
    assert store.size_bytes() > before + 20_000 * 20


def test_migrations_idempotent_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    s = Store(path)
    s.add_readings([Reading("m", "e", T0, 1.0)])
    s.close()
    for _ in range(2):
        s = Store(path)
        assert s.conn.execute("PRAGMA user_version").fetchone() == (len(schema.MIGRATIONS),)
        assert s.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert s.conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
        assert len(s.readings_after(0, 10)) == 1
        s.close()


def test_newer_schema_refused_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    Store(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_corrupt_database_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    s = Store(path)
    put(s, 4)
    s.add_readings([Reading("m", "e", T0, 1.0)])
    s.close()
    with open(path, "r+b") as f:
        f.write(b"garbage!" * 32)
    s = Store(path)
    moved = list(tmp_path.glob("c.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].stat().st_size > 0
    assert s.readings_after(0, 10) == []
    assert s.counters()["corrupt_db_moved"] == 1
    state = s.get_state("corrupt_db_moved")
    assert state is not None and moved[0].name in state
    assert [e[1] for e in s.events()] == ["corrupt_db_moved"]
    seq, head = s.chain_head()
    assert head == Store.ZERO_HASH
    assert seq > 4  # seq never repeats even though the old chain head was unreadable
    s.close()


def test_damaged_page_salvages_chain_head(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    s = Store(path)
    payloads = put(s, 3)
    s.add_readings([Reading("m", "e", T0 + i, float(i)) for i in range(50_000)])
    root = s.conn.execute("SELECT rootpage FROM sqlite_master WHERE name='polls'").fetchone()
    page = s.conn.execute("PRAGMA page_size").fetchone()[0]
    s.checkpoint()
    s.close()
    with open(path, "r+b") as f:  # wreck the polls table's root page only
        f.seek((root[0] - 1) * page)
        f.write(b"\xff" * page)
    s = Store(path)
    assert s.counters()["corrupt_db_moved"] == 1
    assert s.chain_head() == (4, hashlib.sha256(payloads[-1]).hexdigest())
    s.close()


def test_unopenable_path_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open"):
        Store(blocker / "x.db")


def test_disk_full_on_commit_is_store_error(store: Store) -> None:
    store.add_readings([Reading("m", "e", T0, 1.0)])
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    # SQLite's own quota gives exactly the error a full partition gives (SQLITE_FULL).
    store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StoreError, match="disk is full — free space"):
        store.add_readings([Reading("m", "e", T0 + i, float(i)) for i in range(50_000)])
    assert len(store.readings_after(0, 10)) == 1  # the failed batch left nothing behind
    store.add_readings([Reading("m", "e", T0 + 1, 2.0)])  # and the store still works


def test_readonly_beside_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with pytest.raises(StoreError, match="no store"):
        Store(path, readonly=True)
    sqlite3.connect(path).close()  # the file exists, its schema is not written yet
    with pytest.raises(StoreError, match="no schema yet"):
        Store(path, readonly=True)
    writer = Store(path)
    put(writer, 2)
    writer.add_readings([Reading("m", "e", T0, 1.0)])
    reader = Store(path, ("mqtt", "https"), readonly=True)
    assert [r.seq for r in reader.pending("https", 10)] == [1, 2]  # never-used destination
    assert reader.last_delivered("https") == (None, None)
    writer.mark_delivered("mqtt", [1])
    writer.add_readings([Reading("m", "e", T0 + 1, 2.0)])
    assert reader.backlog("mqtt") == (1, T0)
    assert reader.last_reading_ts() == T0 + 1  # sees the writer's later commits
    writer.add_readings([Reading("late", "e", T0, 3.0)])
    assert [r.value for r in reader.readings_for("late", "e", T0, T0 + 1)] == [3.0]
    with pytest.raises(StoreError):
        reader.set_state("k", "v")
    reader.close()
    writer.close()
