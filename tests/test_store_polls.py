"""Readings stored one row per meter poll (buffer/polls.py, buffer/readings.py): whatever goes
in through add_readings comes back sample for sample, by commit order and by point and time."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer import polls, readings
from buffer.polls import MAX_SPAN_MS, Layout
from buffer.store import Store, StoreError
from drivers.base import MeterPoll, Quality, Reading

T0 = 1_800_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "p.db")
    yield s
    s.close()


def same(a: Reading, b: Reading) -> bool:
    """Equal as stored: NaN reads back as None (as v1 did: SQLite stores a NaN as NULL)."""
    va = None if a.value is not None and math.isnan(a.value) else a.value
    return (a.meter, a.point, a.ts, va, a.quality) == (b.meter, b.point, b.ts, b.value, b.quality)


def poll(meter: str, points: int, ts: int, value: float = 1.0, step_ms: int = 0) -> list[Reading]:
    return [Reading(meter, f"p{k}", ts + k * step_ms, value + k) for k in range(points)]


def rows(store: Store) -> list[tuple]:
    return store.conn.execute("SELECT id, layout_id, ts, length(vals), quality, ts_delta FROM polls"
                              " ORDER BY id").fetchall()


def test_one_row_per_meter_poll(store: Store) -> None:
    tick = poll("m1", 12, T0) + poll("m2", 3, T0 + 7)
    store.readings.add_readings(tick)
    store.readings.add_readings(poll("m1", 12, T0 + 1000) + poll("m2", 3, T0 + 1007))
    got = rows(store)
    assert [(i, lid, ts, n) for i, lid, ts, n, _, _ in got] == [
        (1, 1, T0, 96), (2, 2, T0 + 7, 24), (3, 1, T0 + 1000, 96), (4, 2, T0 + 1007, 24)]
    assert all(q is None and d is None for *_, q, d in got)  # all GOOD, one timestamp each
    assert [r for _, r in store.readings.readings_after(0, 2)] == tick
    assert [i for i, _ in store.readings.readings_after(0, 10)] == [1] * 12 + [2] * 3 + [3] * 12 + [4] * 3


def test_a_group_ends_where_the_meter_changes_or_a_point_repeats(store: Store) -> None:
    batch = [Reading("a", "x", T0, 1.0), Reading("a", "y", T0, 2.0), Reading("a", "x", T0 + 1, 3.0),
             Reading("b", "x", T0, 4.0), Reading("a", "y", T0 + 2, 5.0)]
    store.readings.add_readings(batch)
    assert [store.readings.layout(lid).points for _, lid, *_ in rows(store)] == [("x", "y"), ("x",), ("x",), ("y",)]
    assert [r for _, r in store.readings.readings_after(0, 10)] == batch


def test_per_point_times_gaps_and_qualities_survive(store: Store) -> None:
    batch = [Reading("m", "a", T0 + 40, 1.5), Reading("m", "b", T0 + 40, -0.0),
             Reading("m", "c", T0, None, Quality.TIMEOUT), Reading("m", "d", T0 + 9, math.nan, Quality.INVALID),
             Reading("m", "e", T0 + 40, math.inf), Reading("m", "f", T0 + 40, 7)]  # type: ignore[arg-type]
    store.readings.add_readings(batch)
    (_, _, ts, _, quality, delta), = rows(store)
    assert ts == T0 and quality == bytes([0, 0, 1, 5, 0, 0]) and delta is not None
    back = [r for _, r in store.readings.readings_after(0, 1)]
    assert all(same(a, b) for a, b in zip(batch, back, strict=True))
    assert back[5].value == 7.0 and type(back[5].value) is float
    assert store.readings.last_reading_ts() == T0 + 40  # the last point of the newest row


def test_a_poll_spanning_more_than_a_uint16_of_ms_is_split(store: Store) -> None:
    batch = [Reading("m", "a", T0, 1.0), Reading("m", "b", T0 + MAX_SPAN_MS, 2.0),
             Reading("m", "c", T0 + MAX_SPAN_MS + 1, 3.0), Reading("m", "d", T0 + MAX_SPAN_MS + 9, 4.0),
             Reading("m", "e", T0 - 5, 5.0)]
    store.readings.add_readings(batch)
    assert [(ts, store.readings.layout(lid).points) for _, lid, ts, *_ in rows(store)] == [
        (T0, ("a", "b")), (T0 + MAX_SPAN_MS + 1, ("c", "d")), (T0 - 5, ("e",))]
    assert [r for _, r in store.readings.readings_after(0, 10)] == batch


def test_a_meter_whose_points_change_gets_a_new_layout(store: Store) -> None:
    store.readings.add_readings(poll("m", 3, T0))
    store.readings.add_readings(poll("m", 4, T0 + 1000))  # reconfigured: one point more
    store.readings.add_readings(poll("m", 3, T0 + 2000))  # and back
    assert [lid for _, lid, *_ in rows(store)] == [1, 2, 1]
    assert [r.ts for r in store.readings.readings_for("m", "p3", 0, 2 * T0)] == [T0 + 1000]
    assert [r.ts for r in store.readings.readings_for("m", "p0", 0, 2 * T0)] == [T0, T0 + 1000, T0 + 2000]


def test_bad_value_is_a_store_error_and_writes_nothing(store: Store) -> None:
    store.readings.add_readings(poll("m", 2, T0))
    with pytest.raises(StoreError, match=r"m/p1 at .*'x' is not a number"):
        store.readings.add_readings([Reading("m", "p0", T0 + 1, 1.0), Reading("m", "p1", T0 + 1, "x")])  # type: ignore[arg-type]
    assert len(rows(store)) == 1


def test_fast_path_and_general_path_encode_alike() -> None:
    """The fast path (layout cached for the meter) must produce exactly the general path's rows."""
    lay = Layout(7, "m", ("a", "b", "c"))
    known = {lay.key: lay}
    cases = [
        [Reading("m", p, T0, 1.0) for p in "abc"],
        [Reading("m", p, T0 + i * 30, 1.0) for i, p in enumerate("abc")],
        [Reading("m", "a", T0, None, Quality.TIMEOUT), Reading("m", "b", T0, 2.0, Quality.CORRUPT),
         Reading("m", "c", T0, 3.0)],
        [Reading("m", p, T0, 1.0) for p in "abcab"],  # the group ends at the repeat
        [Reading("m", p, T0, 1.0) for p in "abcd"],  # longer than the cached layout
        [Reading("m", p, T0 + i * 40_000, 1.0) for i, p in enumerate("abc")],  # too wide a span
    ]
    for batch in cases:
        fast = polls.encode(batch, {"m": lay}, known)
        general = polls.encode(batch, {}, known)
        assert fast == general, batch


def test_readings_for_across_the_index_cursor(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readings, "INDEX_ROWS_PER_LAYOUT", 5)
    expected: dict[str, list[Reading]] = {"m0": [], "m1": []}
    for t in range(23):
        tick = poll("m0", 2, T0 + t * 1000, float(t)) + poll("m1", 2, T0 + t * 1000 + 3, float(t), step_ms=2)
        store.readings.add_readings(tick)
        for r in tick:
            if r.point == "p1":
                expected[r.meter].append(r)
        indexed = store.state.cursor(readings.INDEXED_CURSOR)
        assert indexed % 10 == 0  # 2 layouts x 5 rows: indexed every 5 ticks, in that commit
        for m in expected:
            lo, hi = T0 + 3000, T0 + t * 1000 + 4  # across the indexed rows and the newer ones
            want = [r for r in expected[m] if lo <= r.ts < hi]
            assert store.readings.readings_for(m, "p1", lo, hi) == want
    assert store.state.cursor(readings.INDEXED_CURSOR) == 40
    assert store.conn.execute("SELECT count(*) FROM poll_index").fetchone() == (40,)


def test_readings_for_searches_the_index_and_only_the_newest_rows(store: Store) -> None:
    plan = " | ".join(r[3] for r in store.conn.execute("EXPLAIN QUERY PLAN " + readings._POINT_SQL,
                                                         (1, 1, 1, 1, 0, 1)))
    assert "SEARCH i USING PRIMARY KEY (layout_id=? AND ts>? AND ts<?)" in plan, plan
    assert "SEARCH p USING INTEGER PRIMARY KEY (rowid>?)" in plan, plan


def test_readings_for_sorts_by_sample_time_then_commit_order(store: Store) -> None:
    # Row 1 starts earlier but its "b" sample is later than row 2's; row 3 ties with row 2.
    store.readings.add_readings([Reading("m", "a", T0, 1.0), Reading("m", "b", T0 + 500, 2.0)])
    store.readings.add_readings([Reading("m", "a", T0 + 100, 3.0), Reading("m", "b", T0 + 100, 4.0)])
    store.readings.add_readings([Reading("m", "b", T0 + 100, 5.0), Reading("m", "a", T0 + 100, 6.0)])
    assert [r.value for r in store.readings.readings_for("m", "b", T0, T0 + 1000)] == [4.0, 5.0, 2.0]
    # The end is exclusive for the sample's own time, not its row's.
    assert [r.value for r in store.readings.readings_for("m", "b", T0, T0 + 500)] == [4.0, 5.0]
    assert [r.value for r in store.readings.readings_for("m", "b", T0 + 101, T0 + 501)] == [2.0]


def test_readonly_store_sees_new_layouts(tmp_path: Path) -> None:
    writer = Store(tmp_path / "ro.db")
    writer.readings.add_readings(poll("m", 2, T0))
    reader = Store(tmp_path / "ro.db", readonly=True)
    writer.readings.add_readings(poll("n", 2, T0))
    assert [r.meter for _, r in reader.readings.readings_after(0, 10)] == ["m", "m", "n", "n"]
    assert [r.value for r in reader.readings.readings_for("n", "p1", T0, T0 + 1)] == [2.0]
    reader.close()
    writer.close()


names = st.sampled_from(["m", "é", 'q"', "a\\b", "\x01", "x{0}", "%s", "\U0001f600"])
points = st.lists(st.sampled_from(["p", "q", "r", "s", "t"]), min_size=1, max_size=5)
values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))
qualities = st.sampled_from(list(Quality))


@st.composite
def batches(draw: st.DrawFn) -> list[list[Reading]]:
    """Ticks of meter polls: each meter's points consecutive, with odd times, gaps and values."""
    out = []
    for t in range(draw(st.integers(1, 4))):
        tick = []
        for meter in draw(st.lists(names, min_size=1, max_size=4)):
            base = T0 + t * 1000 + draw(st.integers(-100_000, 100_000))
            for p in draw(points):
                ts = base + draw(st.sampled_from([0, 0, 0, 7, 500, 70_000]))
                tick.append(Reading(meter, p, ts, draw(values), draw(qualities)))
        out.append(tick)
    return out


@pytest.fixture(scope="module")
def fresh_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store file to copy: creating one per example would run the migration child each time."""
    path = tmp_path_factory.mktemp("fresh") / "fresh.db"
    Store(path).close()
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches())
def test_everything_comes_back(tmp_path_factory: pytest.TempPathFactory, fresh_file: Path,
                               ticks: list[list[Reading]]) -> None:
    path = tmp_path_factory.mktemp("h") / "h.db"
    shutil.copy(fresh_file, path)
    s = Store(path)
    try:
        for tick in ticks:
            s.readings.add_readings(tick)
        flat = [r for tick in ticks for r in tick]
        back = [r for _, r in s.readings.readings_after(0, 10**6)]
        assert len(back) == len(flat) and all(same(a, b) for a, b in zip(flat, back, strict=True))
        ids = [i for i, _ in s.readings.readings_after(0, 10**6)]
        assert ids == sorted(ids)
        for meter, point in {(r.meter, r.point) for r in flat}:
            lo, hi = T0 - 50_000, T0 + 60_000
            want = sorted((r for r in flat if (r.meter, r.point) == (meter, point) and lo <= r.ts < hi),
                          key=lambda r: r.ts)  # stable: commit order among equal times
            got = s.readings.readings_for(meter, point, lo, hi)
            assert len(got) == len(want) and all(same(a, b) for a, b in zip(want, got, strict=True))
    finally:
        s.close()


def test_encoded_on_another_thread_commits_what_add_readings_would(tmp_path: Path) -> None:
    # The agent encodes on the event loop and commits on the store thread.
    import threading

    ticks = [poll("a", 12, T0) + poll("b", 3, T0 + 5, step_ms=700),
             [*poll("a", 12, T0 + 1000), Reading("c", "x", T0 + 1000, None, Quality.TIMEOUT)],
             poll("a", 11, T0 + 2000)]  # a's points changed: a new layout, its guess is stale
    whole, split = Store(tmp_path / "whole.db"), Store(tmp_path / "split.db")
    for tick in ticks:
        whole.readings.add_readings(tick)
        encoded = split.readings.encode_readings(tick)
        t = threading.Thread(target=split.readings.add_encoded, args=(encoded,))
        t.start()
        t.join()
    assert rows(split) == rows(whole)
    def after(s: Store) -> list[Reading]:
        return [r for _, r in s.readings.readings_after(0, 100)]

    assert after(split) == after(whole)
    with pytest.raises(StoreError, match="not a number"):
        split.readings.encode_readings([Reading("a", "p0", T0, "1.5")])  # type: ignore[arg-type]
    whole.close()
    split.close()


LAYOUTS = [Layout(1, "a", ("p", "q", "r")), Layout(2, "a", ("p",)), Layout(3, "b", ("p", "q"))]  # "c" has none


@st.composite
def handed_over(draw: st.DrawFn) -> list[list[Reading] | MeterPoll]:
    """What the pollers hand the store: a sequence per meter poll, MeterPolls among lists."""
    out: list[list[Reading] | MeterPoll] = []
    for t in range(draw(st.integers(1, 3))):
        for meter in draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=4)):
            pts = draw(st.sampled_from([("p", "q", "r"), ("p", "q"), ("p",)]))
            ts = T0 + t * 1000
            if draw(st.booleans()):
                finite = st.floats(allow_nan=False, allow_infinity=False)
                out.append(MeterPoll(meter, pts, ts, tuple(draw(finite) for _ in pts)))
            else:
                out.append([Reading(meter, p, ts + draw(st.sampled_from([0, 5])), draw(values), draw(qualities))
                            for p in pts])
    return out


@settings(max_examples=300, deadline=None)
@given(handed_over(), st.sets(st.sampled_from(range(len(LAYOUTS)))))
def test_encode_polls_encodes_as_the_flat_readings_would(given_polls, guessed) -> None:
    known = {lay.key: lay for lay in LAYOUTS}
    guesses = {LAYOUTS[i].meter: LAYOUTS[i] for i in sorted(guessed)}  # stale or right guesses
    latest_polls, latest_flat = dict(guesses), dict(guesses)
    got = polls.encode_polls(given_polls, latest_polls, known)
    want = polls.encode([r for p in given_polls for r in p], latest_flat, known)
    assert got == want
    # The guesses are a cache: they may differ in which layout they hold, never in what it is.
    assert all(lay.meter == m and known[lay.key] is lay for m, lay in latest_polls.items())
