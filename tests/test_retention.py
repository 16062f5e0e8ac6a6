"""buffer.retention: prune order, the disk budget, and what is never deleted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from buffer import readings
from buffer.retention import prune, storage_alarm
from buffer.store import EnvelopeMeta, Store
from drivers.base import Reading
from tests.store_helpers import enqueue

DAY = 86_400_000
NOW = 1_763_700_000_000 + 400 * DAY
RAW_KEEP, HISTORY_KEEP = 7 * DAY, 183 * DAY


def add_readings(store: Store, n: int, ts0: int, step: int = 1000) -> None:
    """n one-point polls (the meter changes every reading): one row, one id and one sample each."""
    store.readings.add_readings([Reading(f"m{i % 10}", "e", ts0 + i * step, float(i)) for i in range(n)])


def add_envelopes(store: Store, n: int, created_ms: int, size: int = 4000,
                  type_: str = "readings") -> list[int]:
    seqs = []
    for _ in range(n):
        seq, _ = store.outbox.chain_head()
        payload = (f"{seq}:".encode() + b"x" * size)[:size]
        enqueue(store, payload, EnvelopeMeta(seq, f"E-G-{seq}", type_, "t", created_ms))
        seqs.append(seq)
    return seqs


def reading_ids(store: Store) -> list[int]:
    return [r[0] for r in store.conn.execute("SELECT id FROM polls ORDER BY id")]


def outbox_seqs(store: Store) -> list[int]:
    return [r[0] for r in store.conn.execute("SELECT seq FROM outbox ORDER BY seq")]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "r.db", ("mqtt", "https"))
    yield s
    s.close()


def test_raw_window_prunes_only_old_sealed_readings(store: Store) -> None:
    add_readings(store, 1000, NOW - 30 * DAY)  # old: ids 1..1000
    add_readings(store, 1000, NOW - DAY)  # inside the raw window: ids 1001..2000
    store.state.set_cursor("sealed_rowid", 500)  # old readings 501..1000 are not sealed yet
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, None)
    assert report.raw_readings == 500
    assert reading_ids(store) == list(range(501, 2001))
    store.state.set_cursor("sealed_rowid", 2000)
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, None)
    assert report.raw_readings == 500
    assert reading_ids(store) == list(range(1001, 2001))
    assert store.state.counters()["pruned_readings"] == 1000


def test_history_window_needs_every_destination(store: Store) -> None:
    old = add_envelopes(store, 6, NOW - 200 * DAY, 100)  # 1..6
    new = add_envelopes(store, 2, NOW - DAY, 100)  # 7..8
    store.outbox.mark_delivered("mqtt", old + new)
    store.outbox.mark_delivered("https", [1, 2, 4, 7, 8])
    store.outbox.mark_rejected("https", 5, "bad data code")
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, None)
    # 3 and 6 still owed to https; 7 and 8 are done but inside the history window
    assert report.history_envelopes == 4
    assert outbox_seqs(store) == [3, 6, 7, 8]
    assert [r.seq for r in store.outbox.pending("https", 10)] == [3, 6]
    assert store.outbox.pending("mqtt", 10) == []
    assert store.outbox.backlog("https") == (2, NOW - 200 * DAY)
    assert report.dropped_envelopes == 0 and "dropped_envelopes" not in store.state.counters()


def test_unsent_envelopes_kept_without_budget_pressure(store: Store) -> None:
    add_envelopes(store, 5, NOW - 400 * DAY)
    add_readings(store, 2000, NOW - 30 * DAY)  # never sealed
    used = store.used_bytes()
    for budget in (None, used * 2):
        report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, budget)
        assert report.dropped_envelopes == 0 and not report.over_budget
    assert outbox_seqs(store) == [1, 2, 3, 4, 5]
    assert len(reading_ids(store)) == 2000


def test_budget_order(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    add_readings(store, 40_000, NOW - 3 * DAY, 10)  # sealed, inside the raw window
    sealed = reading_ids(store)[-1]
    store.state.set_cursor("sealed_rowid", sealed)
    add_readings(store, 20_000, NOW - 2 * DAY, 10)  # not sealed: never deleted
    done = add_envelopes(store, 400, NOW - DAY)  # delivered everywhere, inside history window
    unsent = add_envelopes(store, 100, NOW - DAY)
    store.outbox.mark_delivered("mqtt", done + unsent[:50])  # half the unsent reached one destination
    store.outbox.mark_delivered("https", done)
    unsealed = reading_ids(store)[sealed:]

    # 1) a little over budget: only the oldest sealed readings go
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, store.used_bytes() - 300_000)
    assert report.budget_readings > 0
    assert (report.budget_envelopes, report.dropped_envelopes) == (0, 0)
    ids = reading_ids(store)
    assert ids[0] > 1 and ids == list(range(ids[0], sealed + 1)) + unsealed
    assert outbox_seqs(store) == done + unsent

    # 2) further: every sealed reading goes before any envelope, then done envelopes oldest first
    sealed_bytes = (sealed - ids[0] + 1) * 60  # generous: a reading takes ~40 bytes here
    budget = store.used_bytes() - sealed_bytes - 200_000
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, budget)
    assert reading_ids(store) == unsealed
    assert 0 < report.budget_envelopes < len(done)
    assert report.dropped_envelopes == 0
    assert outbox_seqs(store) == done[report.budget_envelopes:] + unsent

    # 3) impossible budget: unsent envelopes dropped oldest first, each counted and recorded
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, 1)
    assert report.over_budget
    assert outbox_seqs(store) == []
    assert report.dropped_envelopes == len(unsent)
    assert report.dropped_ids == tuple(f"E-G-{s}" for s in unsent)
    assert store.state.counters()["dropped_envelopes"] == len(unsent)
    dropped_events = store.state.events("envelope_dropped")
    assert [e[3]["seq"] for e in dropped_events] == unsent
    assert json.loads(store.state.get("last_dropped_envelope") or "{}")["seq"] == unsent[-1]
    lines = [m for m in caplog.messages if "dropped" in m and "unsent envelope" in m]
    assert len(lines) == 1 and f"dropped {len(unsent)} unsent envelope(s), E-G-{unsent[0]} " in lines[0]
    assert reading_ids(store) == unsealed  # unsealed readings are never deleted
    assert store.outbox.pending("mqtt", 10) == [] and store.outbox.backlog("https") == (0, None)
    assert store.outbox.chain_head()[0] == unsent[-1] + 1  # seq never goes back after a drop


def test_space_is_given_back(store: Store) -> None:
    add_readings(store, 100_000, NOW - 30 * DAY, 10)
    store.state.set_cursor("sealed_rowid", reading_ids(store)[-1] - 10)
    store.checkpoint()
    before = store.size_bytes()
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, None)
    assert report.raw_readings == 100_000 - 10
    assert report.bytes_after == store.size_bytes()
    assert store.size_bytes() < before / 4
    assert store.free_pages() == 0


def test_poll_rows_go_whole_counted_in_samples_with_their_index_entries(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readings, "INDEX_ROWS_PER_LAYOUT", 4)  # most rows indexed, some not yet

    def tick(ts: int) -> None:
        store.readings.add_readings([Reading(f"m{i}", f"p{k}", ts + i, float(k)) for i in range(3) for k in range(12)])

    for t in range(40):  # old, but tick 20 stamped by a clock that had jumped a day ahead
        tick(NOW - 30 * DAY + t * 1000 if t != 20 else NOW - DAY)
    for t in range(5):
        tick(NOW - DAY + (t + 1) * 1000)
    store.state.set_cursor("sealed_rowid", 135)
    assert store.state.cursor(readings.INDEXED_CURSOR) == 132
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, None)
    assert report.raw_readings == 39 * 3 * 12  # samples, not rows
    assert store.state.counters()["pruned_readings"] == 39 * 3 * 12
    left = reading_ids(store)
    assert left == [61, 62, 63, *range(121, 136)]
    indexed = [r[0] for r in store.conn.execute("SELECT id FROM poll_index ORDER BY id")]
    assert indexed == [i for i in left if i <= 132]  # no entry outlives its row
    assert [r.ts for r in store.readings.readings_for("m1", "p7", NOW - 2 * DAY, NOW)] == [
        NOW - DAY + 1 + t * 1000 for t in range(6)]


def test_free_pages_go_back_in_steps_not_one_by_one(store: Store) -> None:
    add_readings(store, 60_000, NOW - 30 * DAY, 10)
    with store.transaction() as c:
        c.execute("DELETE FROM polls")
    free = store.free_pages()
    assert free > 300
    store.give_back_pages(200)
    assert store.free_pages() == free - 200


def test_new_readings_never_fall_behind_the_sealed_cursor(store: Store) -> None:
    add_readings(store, 100, NOW - 30 * DAY)
    store.state.set_cursor("sealed_rowid", 100)
    prune(store, NOW, RAW_KEEP, HISTORY_KEEP, None)
    assert reading_ids(store) == []
    add_readings(store, 1, NOW)
    assert [i for i, _ in store.readings.readings_after(store.state.cursor("sealed_rowid"), 10)] == [101]


def test_prune_logs_one_line(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    add_readings(store, 10, NOW - 30 * DAY)
    store.state.set_cursor("sealed_rowid", 10)
    with caplog.at_level(logging.INFO, logger="buffer.retention"):
        prune(store, NOW, RAW_KEEP, HISTORY_KEEP, None)
    assert len([r for r in caplog.records if r.name == "buffer.retention"]) == 1


def test_raw_window_keeps_readings_accounting_needs(store: Store) -> None:
    add_readings(store, 1000, NOW - 3 * DAY)  # summarised: ids 1..1000
    add_readings(store, 1000, NOW - 36 * 3_600_000)  # the open day still reads them: 1001..2000
    store.state.set_cursor("sealed_rowid", 2000)
    store.state.set_cursor("summarised_ts", NOW - 2 * DAY)
    report = prune(store, NOW, DAY, HISTORY_KEEP, None)  # a raw window shorter than a report
    assert report.raw_readings == 1000
    assert reading_ids(store) == list(range(1001, 2001))
    store.state.set_cursor("summarised_ts", NOW - DAY)  # the Reporter sealed that day
    assert prune(store, NOW, DAY, HISTORY_KEEP, None).raw_readings == 1000
    assert reading_ids(store) == []


def test_budget_takes_needed_readings_only_before_unsent_envelopes(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    add_readings(store, 20_000, NOW - 3 * DAY, 10)  # summarised
    first_needed = reading_ids(store)[-1] + 1
    add_readings(store, 20_000, NOW - 3_600_000, 10)  # today's: the open day's reports read them
    sealed = reading_ids(store)[-1]
    store.state.set_cursor("sealed_rowid", sealed)
    store.state.set_cursor("summarised_ts", NOW - DAY)
    add_readings(store, 5_000, NOW - 60_000, 10)  # not sealed
    needed = list(range(first_needed, sealed + 1))
    unsealed = reading_ids(store)[sealed:]
    done = add_envelopes(store, 300, NOW - 100 * DAY)
    unsent = add_envelopes(store, 50, NOW - DAY)
    store.outbox.mark_delivered("mqtt", done)
    store.outbox.mark_delivered("https", done)

    # 1) a little over: only summarised readings go
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, store.used_bytes() - 300_000)
    assert report.budget_readings > 0 and report.needed_readings == 0
    assert report.budget_envelopes == 0
    assert reading_ids(store)[-len(needed) - len(unsealed):] == needed + unsealed
    assert outbox_seqs(store) == done + unsent

    # 2) more than the summarised readings free: delivered history goes, today's readings stay
    summarised_left = len(reading_ids(store)) - len(needed) - len(unsealed)
    budget = store.used_bytes() - summarised_left * 60 - 200_000  # ~60 bytes: generous
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, budget)
    assert reading_ids(store) == needed + unsealed
    assert 0 < report.budget_envelopes < len(done) and report.needed_readings == 0
    assert "pruned_needed_readings" not in store.state.counters()

    # 3) more than every done envelope frees: the needed readings go, oldest first, with a
    #    warning — and still no unsent envelope
    left = len(outbox_seqs(store)) - len(unsent)
    budget = store.used_bytes() - left * 5000 - 150_000
    with caplog.at_level(logging.WARNING, logger="buffer.retention"):
        report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, budget)
    assert not report.over_budget
    assert outbox_seqs(store) == unsent and report.dropped_envelopes == 0
    assert 0 < report.needed_readings < len(needed)
    assert reading_ids(store) == needed[report.needed_readings:] + unsealed
    assert store.state.counters()["pruned_needed_readings"] == report.needed_readings
    assert any("reports not yet sealed still read" in m for m in caplog.messages)

    # 4) impossible: every sealed reading, then the unsent envelopes; unsealed ones stay
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, 1)
    assert report.over_budget and report.dropped_envelopes == len(unsent)
    assert reading_ids(store) == unsealed and outbox_seqs(store) == []


def test_unsent_envelopes_go_by_worth_superseded_heartbeats_then_raw_samples(store: Store) -> None:
    def put(type_: str) -> int:
        seq, _ = store.outbox.chain_head()
        enqueue(store, b"x" * 2000, EnvelopeMeta(seq, f"E-G-{seq}", type_, "t", NOW - DAY))
        return seq

    kinds = ["status", "readings", "daily", "status", "readings", "interval", "manual", "status", "readings"]
    seqs = {seq: kind for seq, kind in ((put(k), k) for k in kinds)}
    store.checkpoint()
    want = ["status", "status", "readings", "readings", "readings"]

    def dropped() -> list[str]:
        return [seqs[e[3]["seq"]] for e in store.state.events("envelope_dropped")]

    prune(store, NOW, RAW_KEEP, HISTORY_KEEP, store.used_bytes() - 4096)  # a little over
    assert 0 < len(dropped()) < len(want) and dropped() == want[:len(dropped())]
    assert storage_alarm(store) is None
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, 1)  # nothing fits
    # Superseded heartbeats and raw samples go; the reports younger than the history window
    # and the newest heartbeat stay, and the storage alarm says the budget is too small.
    assert dropped() == want
    left = sorted(seqs[s] for s in outbox_seqs(store))
    assert left == ["daily", "interval", "manual", "status"]
    assert report.over_budget
    alarm = storage_alarm(store)
    assert alarm is not None and "history_keep_days" in alarm["reason"] and alarm["budget_bytes"] == 1
    prune(store, NOW, RAW_KEEP, HISTORY_KEEP, None)  # budget lifted: the alarm ends
    assert storage_alarm(store) is None


def test_budget_never_deletes_delivered_reports_younger_than_the_history_window(store: Store) -> None:
    old = add_envelopes(store, 20, NOW - 200 * DAY, type_="daily")  # past the window: may go
    young = {t: add_envelopes(store, 30, NOW - 90 * DAY, type_=t)
             for t in ("interval", "daily", "monthly", "manual")}
    raw = add_envelopes(store, 60, NOW - 10 * DAY)
    every = old + [s for v in young.values() for s in v] + raw
    store.outbox.mark_delivered("mqtt", every)
    store.outbox.mark_delivered("https", every)
    # HISTORY_KEEP is 183 days: the 200-day-old ones go in step 2 already; under a budget that
    # cannot be met, delivered raw samples go, every young report stays.
    report = prune(store, NOW, RAW_KEEP, HISTORY_KEEP, 1)
    assert outbox_seqs(store) == sorted(s for v in young.values() for s in v)
    assert report.history_envelopes == len(old) and report.budget_envelopes == len(raw)
    assert report.over_budget and storage_alarm(store) is not None


def test_status_shows_the_storage_alarm(store: Store, tmp_path: Path) -> None:
    from agent.commands.status import collect
    from agent.config import load_config
    from tests.test_reports import CONFIG

    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path))
    cfg = load_config(tmp_path / "agent.toml")
    add_envelopes(store, 5, NOW - DAY, type_="daily")
    assert not any("storage alarm" in w for w in collect(cfg, store, NOW)["warnings"])
    prune(store, NOW, RAW_KEEP, HISTORY_KEEP, 1)
    report = collect(cfg, store, NOW)
    assert report["storage_alarm"]["budget_bytes"] == 1
    assert any(w.startswith("storage alarm:") and "raise storage.budget_mb" in w
               for w in report["warnings"])
