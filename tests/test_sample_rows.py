"""The sealer's fast path (agent/protocol/sample_rows.py) writes exactly the bytes the plain path wrote:
canonical() of [meter, point, ts, format_value(value, decimals), quality] per sample; and
readings envelopes hold whole poll rows, at most `batch` samples each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.protocol.canonical import MAX_SAFE_INTEGER, canonical
from agent.protocol.envelope import format_value
from agent.protocol.sample_rows import RowRenderer, body_json
from agent.protocol.sealer import Sealer
from agent.protocol.signing import load_signer
from buffer import polls
from buffer.names import SEALED_CURSOR
from buffer.polls import Layout
from buffer.store import Store
from drivers.base import Quality, Reading
from tests.agent_harness import write_site

T0 = 1_800_000_000_000

tricky = st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\n", "{", "}", "{0}", "%", "%s", "-0", '1,"-0"',
                          "é", "€", "\u2028", "\U0001f600", "nan", "inf", "-", ","])
names = st.one_of(st.text(max_size=8), st.lists(tricky, min_size=1, max_size=4).map("".join))
values = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e-3, max_value=1e-3),  # where negative zeros come from
    st.sampled_from([-0.0, 0.0, -0.0004, -0.5, 0.5, 2.5, 1e300, -1e300, 5e-324, 12345.669921875]),
)
times = st.one_of(st.integers(0, 2 * T0), st.sampled_from([-5, MAX_SAFE_INTEGER - 65_535, MAX_SAFE_INTEGER + 1]))


def plain(meter: str, rows: list[tuple[str, int, float | None, int]], decimals: dict[str, int]) -> list[list]:
    """The samples as the sealer used to build them from stored rows (a NaN was read back as None)."""
    return [[meter, p, ts, format_value(v, decimals[p]), int(q)] for p, ts, v, q in rows]


@st.composite
def polls_(draw: st.DrawFn) -> tuple[str, list[tuple[str, int, float | None, int]], dict[str, int]]:
    meter = draw(names)
    points = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    base = draw(times)
    uniform = draw(st.booleans())
    rows = []
    for p in points:
        ts = base if uniform else base + draw(st.integers(0, 65_535))
        q = Quality.GOOD if uniform else draw(st.sampled_from(list(Quality)))
        rows.append((p, ts, draw(values), q))
    decimals = {p: draw(st.integers(0, 9)) for p in points}
    return meter, rows, decimals


def stored(meter: str, rows: list[tuple[str, int, float | None, int]]) -> tuple[int, bytes, bytes | None, bytes | None]:
    """The poll row the store writes for these samples (one row: their times span <= 65535 ms)."""
    lay = Layout(1, meter, tuple(p for p, *_ in rows))
    readings = [Reading(meter, p, ts, v, Quality(q)) for p, ts, v, q in rows]
    (row,) = polls.encode(readings, {meter: lay}, {lay.key: lay})
    return row[1:]  # type: ignore[return-value]


def render_or_error(meter: str, rows: list, decimals: dict[str, int]) -> bytes | type[Exception]:
    try:
        r = RowRenderer(meter, [p for p, *_ in rows], [decimals[p] for p, *_ in rows])
        return body_json([r.render(*stored(meter, rows))])
    except (ValueError, TypeError) as e:
        return type(e)


def plain_or_error(meter: str, rows: list, decimals: dict[str, int]) -> bytes | type[Exception]:
    try:
        return canonical({"samples": plain(meter, rows, decimals)})
    except (ValueError, TypeError) as e:
        return type(e)


@settings(max_examples=1500, deadline=None)
@given(polls_())
@example(("m", [("p", T0, -0.0, 0), ("q", T0, -0.0004, 0), ("r", T0, math.nan, 0)], {"p": 2, "q": 3, "r": 1}))
@example(('1,"-0"', [("-0", T0, -0.0001, 0), ('"-0"', T0 + 5, None, 1)], {"-0": 0, '"-0"': 2}))
@example(("m{0}%s", [("{1:.3f}", T0, math.inf, 5), ("%d", T0, -math.inf, 5)], {"{1:.3f}": 3, "%d": 3}))
def test_fast_path_writes_the_plain_bytes(poll: tuple) -> None:
    meter, rows, decimals = poll
    assert render_or_error(meter, rows, decimals) == plain_or_error(meter, rows, decimals)


def test_decimals_outside_0_to_9_take_the_reference_path() -> None:
    rows = [("p", T0, None, 1), ("q", T0, None, 1)]
    assert render_or_error("m", rows, {"p": 12, "q": 12}) == plain_or_error("m", rows, {"p": 12, "q": 12})
    rows = [("p", T0, 1.5, 0)]
    assert render_or_error("m", rows, {"p": 12}) is ValueError  # as format_value refuses it


def test_a_lone_surrogate_in_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        RowRenderer("m\ud800", ["p"], [2])


def test_several_rows_make_one_body() -> None:
    a = RowRenderer("a", ["x", "y"], [1, 2])
    b = RowRenderer("b", ["z"], [0])
    ra = [("x", T0, 1.25, 0), ("y", T0, -2.0, 0)]
    rb = [("z", T0 + 1, None, 1)]
    got = body_json([a.render(*stored("a", ra)), b.render(*stored("b", rb))])
    assert got == canonical({"samples": plain("a", ra, {"x": 1, "y": 2}) + plain("b", rb, {"z": 0})})
    assert json.loads(got) == {"samples": [["a", "x", T0, "1.2", 0], ["a", "y", T0, "-2.00", 0],
                                           ["b", "z", T0 + 1, "", 1]]}


# -- the sealer on a real store -----------------------------------------------------------------

def sealer_for(tmp_path: Path, batch: int) -> tuple[Sealer, Store]:
    cfg = load_config(write_site(tmp_path, 1883, 502))
    store = Store(tmp_path / "agent.db")
    return Sealer(cfg, store, load_signer(cfg.signing.key_file), clock=lambda: T0 / 1000, batch=batch), store


def sealed(store: Store) -> list[list[list]]:
    return [json.loads(r.payload)["body"]["samples"] for r in store.outbox.pending("mqtt", 10**6)]


def tick(t: int, meters: int, points: int) -> list[Reading]:
    return [Reading(f"m{i}", f"p{k}", T0 + t * 1000 + i, (-1) ** k * (t + k / 7) if k % 3 else None,
                    Quality.GOOD if k % 3 else Quality.TIMEOUT)
            for i in range(meters) for k in range(points)]


@pytest.mark.parametrize("batch", [1, 4, 7, 9, 1000])
def test_envelopes_hold_whole_rows_and_every_sample_once(tmp_path: Path, batch: int) -> None:
    sealer, store = sealer_for(tmp_path, batch)
    expected = []
    for t in range(4):
        rows = tick(t, 5, 3)
        store.readings.add_readings(rows)
        expected += [[r.meter, r.point, r.ts, format_value(r.value, 3), int(r.quality)] for r in rows]
        if t % 2:
            sealer.seal_readings()
    bodies = sealed(store)
    assert [s for body in bodies for s in body] == expected  # in commit order, each once
    for body in bodies:
        assert len(body) % 3 == 0  # whole 3-point rows...
        assert len(body) <= max(batch, 3)  # ...and no more than batch, unless one row is more
    # Filled greedily: each pass seals 10 rows, as many whole rows per envelope as fit.
    assert len(bodies) == 2 * math.ceil(10 / max(1, batch // 3))
    assert store.state.cursor(SEALED_CURSOR) == 20


def test_a_row_larger_than_the_batch_goes_alone(tmp_path: Path) -> None:
    sealer, store = sealer_for(tmp_path, 5)
    store.readings.add_readings(tick(0, 1, 2) + [Reading("big", f"p{k}", T0, float(k)) for k in range(12)]
                       + tick(1, 1, 2))
    assert sealer.seal_readings() == 3
    assert [len(b) for b in sealed(store)] == [2, 12, 2]


def test_the_envelopes_of_one_round_commit_together(tmp_path: Path) -> None:
    sealer, store = sealer_for(tmp_path, 6)
    store.readings.add_readings(tick(0, 4, 3))  # four rows of 3, fetched at once: two envelopes, one commit
    real = sealer.signer.sign
    calls = []

    def sign(data: bytes) -> bytes:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("signer gone")
        return real(data)

    sealer.signer.sign = sign  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        sealer.seal_readings()
    assert store.outbox.chain_head()[0] == 1 and store.state.cursor(SEALED_CURSOR) == 0  # none of them
    sealer.signer.sign = real  # type: ignore[method-assign]
    assert sealer.seal_readings() == 2
    assert store.state.cursor(SEALED_CURSOR) == 4
