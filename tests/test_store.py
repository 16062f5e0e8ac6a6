"""buffer.store against real SQLite files."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from buffer import schema
from buffer.store import EnvelopeMeta, MeterStatus, OutboxRow, Store, StoreError
from drivers.base import Quality, Reading
from tests.store_helpers import enqueue

T0 = 1_763_700_000_000


def meta(seq: int, type: str = "readings", period: str | None = None,
         created_ms: int = T0) -> EnvelopeMeta:
    return EnvelopeMeta(seq, f"E-G-{seq}", type, f"energy/E/G/up/{type}", created_ms, period)


def put(store: Store, n: int, type: str = "readings", period: str | None = None) -> list[bytes]:
    """Enqueue n envelopes the way the sealer does: seq and prev from chain_head()."""
    payloads = []
    for _ in range(n):
        seq, prev = store.outbox.chain_head()
        payload = f'{{"seq":{seq},"prev":"{prev}"}}'.encode()
        enqueue(store, payload, meta(seq, type, period))
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
    store.readings.add_readings(rows)
    store.readings.add_readings([Reading("m1", "e", T0 + 60_000, 12346.0)])
    got = store.readings.readings_after(0, 100)
    assert [r for _, r in got] == [*rows, Reading("m1", "e", T0 + 60_000, 12346.0)]
    ids = [i for i, _ in got]
    assert ids == sorted(ids)
    assert [r for _, r in store.readings.readings_after(ids[1], 2)] == [rows[2], got[3][1]]
    assert store.readings.last_reading_ts() == T0 + 60_000


def test_readings_for_boundaries(store: Store) -> None:
    store.readings.add_readings([Reading("m", "e", T0 + i * 1000, float(i)) for i in (3, 0, 2, 1)])
    store.readings.add_readings([Reading("m", "other", T0 + 1000, 9.0)])
    got = store.readings.readings_for("m", "e", T0, T0 + 2000)
    assert [r.value for r in got] == [0.0, 1.0]  # start inclusive, end exclusive, by ts
    assert [r.ts for r in store.readings.readings_for("m", "e", T0 + 1, T0 + 3001)] == [T0 + 1000,
                                                                              T0 + 2000,
                                                                              T0 + 3000]
    assert store.readings.readings_for("m", "nope", 0, 2 * T0) == []


def test_statuses_committed_with_readings(store: Store) -> None:
    st = MeterStatus("m1", "bus1", False, T0, T0 + 5, "no reply", 7, 3)
    store.readings.add_readings([Reading("m1", "e", T0, 1.0)], [st])
    assert store.state.meter_statuses() == [st]
    st2 = MeterStatus("m1", "bus1", True, T0 + 9, None, None, 7, 0)
    store.readings.add_readings([], [st2])
    assert store.state.meter_statuses() == [st2]


def test_failed_batch_leaves_nothing_and_no_stale_series(store: Store) -> None:
    bad = [Reading("new", "p", T0, 1.0), Reading("new", "q", T0, object())]  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.readings.add_readings(bad)
    assert store.readings.readings_after(0, 10) == []
    store.readings.add_readings([Reading("new", "p", T0, 2.0)])  # series cache not poisoned
    assert [r.value for r in store.readings.readings_for("new", "p", 0, 2 * T0)] == [2.0]


def test_chain_head_enqueue_and_continuity_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    s = Store(path)
    assert s.outbox.chain_head() == (1, Store.ZERO_HASH)
    payloads = put(s, 3)
    assert s.outbox.chain_head() == (4, hashlib.sha256(payloads[-1]).hexdigest())
    s.close()
    s = Store(path)
    assert s.outbox.chain_head() == (4, hashlib.sha256(payloads[-1]).hexdigest())
    assert [r.payload for r in s.outbox.pending("mqtt", 10)] == payloads
    s.close()


def test_enqueue_sets_cursor_atomically(store: Store) -> None:
    assert store.state.cursor("sealed_rowid") == 0
    enqueue(store, b"a", meta(1), ("sealed_rowid", 42))
    assert store.state.cursor("sealed_rowid") == 42
    store.state.set_cursor("other", 7)
    assert store.state.cursor("other") == 7


def test_pending_rows_and_after_seq(store: Store) -> None:
    enqueue(store, b"p1", meta(1, "daily", "2026-11-21", T0 + 1))
    put(store, 3)
    rows = store.outbox.pending("mqtt", 2)
    assert rows[0] == OutboxRow(1, "E-G-1", "daily", "energy/E/G/up/daily", b"p1", T0 + 1,
                                "2026-11-21")
    assert [r.seq for r in rows] == [1, 2]
    assert [r.seq for r in store.outbox.pending("mqtt", 10, after_seq=2)] == [3, 4]


def test_destinations_are_independent(store: Store) -> None:
    put(store, 5)
    store.outbox.mark_delivered("mqtt", [1, 2, 3])
    assert [r.seq for r in store.outbox.pending("mqtt", 10)] == [4, 5]
    assert [r.seq for r in store.outbox.pending("https", 10)] == [1, 2, 3, 4, 5]
    assert store.outbox.backlog("mqtt") == (2, T0)
    assert store.outbox.backlog("https") == (5, T0)
    assert store.outbox.last_delivered("mqtt")[0] == 3
    assert store.outbox.last_delivered("https") == (None, None)
    with pytest.raises(ValueError, match="unknown destination"):
        store.outbox.pending("ftp", 1)


def test_out_of_order_delivery(tmp_path: Path) -> None:
    s = Store(tmp_path / "o.db")
    put(s, 6)
    s.outbox.mark_delivered("mqtt", [2, 4, 5])
    assert [r.seq for r in s.outbox.pending("mqtt", 10)] == [1, 3, 6]
    assert s.outbox.backlog("mqtt")[0] == 3
    assert s.outbox.last_delivered("mqtt")[0] == 5
    s.outbox.mark_delivered("mqtt", [1])
    assert [r.seq for r in s.outbox.pending("mqtt", 10)] == [3, 6]
    wm = s.conn.execute("SELECT watermark FROM delivery WHERE destination='mqtt'").fetchone()
    assert wm == (2,)  # only over contiguous acks
    s.outbox.mark_delivered("mqtt", [3, 99])  # 99 was never enqueued: ignored
    assert [r.seq for r in s.outbox.pending("mqtt", 10)] == [6]
    assert s.conn.execute("SELECT watermark FROM delivery WHERE destination='mqtt'").fetchone() \
        == (5,)
    assert s.conn.execute("SELECT count(*) FROM delivery_marks").fetchone() == (0,)
    s.close()
    s = Store(tmp_path / "o.db")
    assert [r.seq for r in s.outbox.pending("mqtt", 10)] == [6]
    assert s.outbox.last_delivered("mqtt")[0] == 5
    s.close()


def test_rejected_never_pending_again(store: Store) -> None:
    put(store, 3)
    store.outbox.mark_rejected("mqtt", 2, "schema error")
    assert [r.seq for r in store.outbox.pending("mqtt", 10)] == [1, 3]
    store.outbox.mark_delivered("mqtt", [1, 3])
    assert store.outbox.pending("mqtt", 10) == []
    assert store.outbox.rejected("mqtt")[0][:2] == (2, "schema error")
    assert store.state.counters()["rejected_envelopes"] == 1
    assert [r.seq for r in store.outbox.pending("https", 10)] == [1, 2, 3]
    assert [r.seq for r in store.outbox.envelopes("readings")] == [1, 2, 3]  # kept


def test_requeued_dead_letter_is_pending_again_alone(store: Store) -> None:
    payloads = put(store, 5)
    store.outbox.mark_delivered("mqtt", [1, 2])
    store.outbox.mark_rejected("mqtt", 3, "too large")
    store.outbox.mark_delivered("mqtt", [4, 5])
    assert store.outbox.pending("mqtt", 10) == [] and store.outbox._watermark("mqtt") == 5
    assert store.outbox.requeue("mqtt", [3, 4, 99]) == [3]  # 4 was delivered, 99 never existed
    pending = store.outbox.pending("mqtt", 10)
    assert [r.seq for r in pending] == [3] and pending[0].payload == payloads[2]  # byte-identical
    assert store.outbox.backlog("mqtt")[0] == 1 and store.outbox.rejected("mqtt") == []
    assert store.outbox.pending("https", 10)[0].seq == 1  # another destination is untouched
    store.outbox.mark_delivered("mqtt", [3])
    assert store.outbox.pending("mqtt", 10) == [] and store.outbox._watermark("mqtt") == 5
    assert store.outbox.requeue("mqtt", [3]) == []  # delivered now: nothing to requeue


def test_corrupt_payload_skipped_and_counted(store: Store, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    put(store, 3)
    raw = sqlite3.connect(store.path)
    (payload,) = raw.execute("SELECT payload FROM payloads WHERE seq = 2").fetchone()
    flipped = bytes([payload[0] ^ 0x01]) + payload[1:]
    with raw:
        raw.execute("UPDATE payloads SET payload = ? WHERE seq = 2", (flipped,))
    raw.close()
    assert [r.seq for r in store.outbox.pending("mqtt", 10)] == [1, 3]
    assert [r.seq for r in store.outbox.pending("mqtt", 10)] == [1, 3]
    assert [r.seq for r in store.outbox.pending("https", 10)] == [1, 3]
    assert [r.seq for r in store.outbox.envelopes("readings")] == [1, 3]
    assert store.state.counters()["corrupt_envelopes"] == 1
    assert sum("E-G-2" in m for m in caplog.messages) == 1
    assert store.outbox.requeue("mqtt", [2]) == []  # a corrupt envelope is never sent
    assert store.outbox.backlog("mqtt")[0] == 2
    store.outbox.mark_delivered("mqtt", [1, 3])
    assert store.outbox.backlog("mqtt") == (0, None)


def test_envelopes_by_type_and_period(store: Store) -> None:
    for i, day in enumerate(["2026-11-20", "2026-11-21", "2026-11-22"], start=1):
        enqueue(store, day.encode(), meta(i, "daily", day))
    enqueue(store, b"m", meta(4, "monthly", "2026-11"))
    assert [r.period for r in store.outbox.envelopes("daily")] == ["2026-11-20", "2026-11-21",
                                                            "2026-11-22"]
    assert [r.period for r in store.outbox.envelopes("daily", "2026-11-21", "2026-11-21")] \
        == ["2026-11-21"]
    assert [r.period for r in store.outbox.envelopes("daily", "2026-11-21")] == ["2026-11-21",
                                                                          "2026-11-22"]
    assert [r.payload for r in store.outbox.envelopes("monthly", None, "2026-12")] == [b"m"]
    assert store.outbox.envelopes("daily", "2026-12-01") == []


def test_sealed_periods_from_the_index_alone(store: Store) -> None:
    days = ["2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22"]
    for i, day in enumerate(days, start=1):
        enqueue(store, f"{day}-{i}".encode(), meta(i, "daily", day))
    enqueue(store, b"again", meta(5, "daily", "2026-11-21"))  # a period sealed twice counts once
    enqueue(store, b"i", meta(6, "interval", "2026-11-21T10:15"))
    assert store.outbox.sealed_periods("daily", "2026-11-20", "2026-11-21") == {"2026-11-20",
                                                                        "2026-11-21"}
    assert store.outbox.sealed_periods("daily", "2026-11-23", "2026-12-31") == set()
    assert store.outbox.sealed_periods("interval", "2026-11-21T00:00", "2026-11-21T23:45") == {
        "2026-11-21T10:15"}
    assert store.outbox.sealed_periods("monthly", "2026-11", "2026-11") == set()
    # No payload is read: the answer stands without the payload rows, and the plan only
    # walks the (type, period) index.
    plan = " ".join(r[3] for r in store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT DISTINCT o.period FROM outbox o"
        " WHERE o.type = ? AND o.period BETWEEN ? AND ?", ("daily", "a", "b")))
    assert "COVERING INDEX" in plan and "payloads" not in plan, plan
    with store.transaction() as c:
        c.execute("DELETE FROM payloads")
    assert store.outbox.sealed_periods("daily", "2026-11-19", "2026-11-22") == set(days)


def test_sealed_periods_skip_a_quarantined_envelope(store: Store) -> None:
    enqueue(store, b"d20", meta(1, "daily", "2026-11-20"))
    enqueue(store, b"d21", meta(2, "daily", "2026-11-21"))
    with store.transaction() as c:
        c.execute("UPDATE payloads SET payload = ? WHERE seq = 2", (b"d2X",))
    assert store.outbox.sealed_periods("daily", "2026-11-01", "2026-11-30") == {"2026-11-20",
                                                                        "2026-11-21"}
    store.outbox.pending("mqtt", 10)  # finds the checksum mismatch and quarantines seq 2
    # Never sent, so the day must be sealed again.
    assert store.outbox.sealed_periods("daily", "2026-11-01", "2026-11-30") == {"2026-11-20"}


def test_cursor_default_when_absent(store: Store) -> None:
    assert store.state.cursor("summarised_ts") == 0
    assert store.state.cursor("summarised_ts", default=-1) == -1
    store.state.set_cursor("summarised_ts", 5)
    assert store.state.cursor("summarised_ts", default=-1) == 5


def test_state_counters_events(store: Store) -> None:
    assert store.state.get("k") is None
    store.state.set("k", "v1")
    store.state.set("k", "v2")
    assert store.state.get("k") == "v2"
    store.state.add_counter("dropped_envelopes")
    store.state.add_counter("dropped_envelopes", 4)
    assert store.state.counters() == {"dropped_envelopes": 5}
    a = store.state.add_event("meter_replaced", T0, {"meter": "m1", "old": "1.5"})
    b = store.state.add_event("clock_jump", T0 + 10, {"delta_ms": -3600000})
    assert b > a
    assert store.state.events() == [(a, "meter_replaced", T0, {"meter": "m1", "old": "1.5"}),
                              (b, "clock_jump", T0 + 10, {"delta_ms": -3600000})]
    assert [e[0] for e in store.state.events("clock_jump")] == [b]
    assert [e[0] for e in store.state.events(since_ms=T0 + 1)] == [b]


def test_size_bytes_counts_wal(store: Store) -> None:
    before = store.size_bytes()
    store.readings.add_readings([Reading("m", "e", T0 + i, float(i)) for i in range(20_000)])
    assert store.size_bytes() > before + 20_000 * 20


def test_migrations_idempotent_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    s = Store(path)
    s.readings.add_readings([Reading("m", "e", T0, 1.0)])
    s.close()
    for _ in range(2):
        s = Store(path)
        assert s.conn.execute("PRAGMA user_version").fetchone() == (len(schema.MIGRATIONS),)
        assert s.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert s.conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
        assert len(s.readings.readings_after(0, 10)) == 1
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
    s.readings.add_readings([Reading("m", "e", T0, 1.0)])
    s.close()
    with open(path, "r+b") as f:
        f.write(b"garbage!" * 32)
    s = Store(path)
    moved = list(tmp_path.glob("c.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].stat().st_size > 0
    assert s.readings.readings_after(0, 10) == []
    assert s.state.counters()["corrupt_db_moved"] == 1
    state = s.state.get("corrupt_db_moved")
    assert state is not None and moved[0].name in state
    assert [e[1] for e in s.state.events()] == ["corrupt_db_moved"]
    seq, head = s.outbox.chain_head()
    assert head == Store.ZERO_HASH
    assert seq > 4  # seq never repeats even though the old chain head was unreadable
    s.close()


def test_damaged_page_salvages_chain_head(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    s = Store(path)
    payloads = put(s, 3)
    s.readings.add_readings([Reading("m", "e", T0 + i, float(i)) for i in range(50_000)])
    root = s.conn.execute("SELECT rootpage FROM sqlite_master WHERE name='polls'").fetchone()
    page = s.conn.execute("PRAGMA page_size").fetchone()[0]
    s.checkpoint()
    s.close()
    with open(path, "r+b") as f:  # wreck the polls table's root page only
        f.seek((root[0] - 1) * page)
        f.write(b"\xff" * page)
    s = Store(path)
    assert s.state.counters()["corrupt_db_moved"] == 1
    assert s.outbox.chain_head() == (4, hashlib.sha256(payloads[-1]).hexdigest())
    s.close()


def test_unopenable_path_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open"):
        Store(blocker / "x.db")


def test_disk_full_on_commit_is_store_error(store: Store) -> None:
    store.readings.add_readings([Reading("m", "e", T0, 1.0)])
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    # SQLite's own quota gives exactly the error a full partition gives (SQLITE_FULL).
    store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StoreError, match="disk is full — free space"):
        store.readings.add_readings([Reading("m", "e", T0 + i, float(i)) for i in range(50_000)])
    assert len(store.readings.readings_after(0, 10)) == 1  # the failed batch left nothing behind
    store.readings.add_readings([Reading("m", "e", T0 + 1, 2.0)])  # and the store still works


def test_readonly_beside_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with pytest.raises(StoreError, match="no store"):
        Store(path, readonly=True)
    sqlite3.connect(path).close()  # the file exists, its schema is not written yet
    with pytest.raises(StoreError, match="no schema yet"):
        Store(path, readonly=True)
    writer = Store(path)
    put(writer, 2)
    writer.readings.add_readings([Reading("m", "e", T0, 1.0)])
    reader = Store(path, ("mqtt", "https"), readonly=True)
    assert [r.seq for r in reader.outbox.pending("https", 10)] == [1, 2]  # never-used destination
    assert reader.outbox.last_delivered("https") == (None, None)
    writer.outbox.mark_delivered("mqtt", [1])
    writer.readings.add_readings([Reading("m", "e", T0 + 1, 2.0)])
    assert reader.outbox.backlog("mqtt") == (1, T0)
    assert reader.readings.last_reading_ts() == T0 + 1  # sees the writer's later commits
    writer.readings.add_readings([Reading("late", "e", T0, 3.0)])
    assert [r.value for r in reader.readings.readings_for("late", "e", T0, T0 + 1)] == [3.0]
    with pytest.raises(StoreError):
        reader.state.set("k", "v")
    reader.close()
    writer.close()
