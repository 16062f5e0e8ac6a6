"""ReplyDecoder against the reference: every point as codec.decode + apply_scale would give it,
whichever path (struct on the reply's bytes, or codec.decode for word-swapped orders) it takes."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import MeterPoll, Quality
from drivers.codec import FORMATS, ORDERS
from drivers.model import REGISTERS, PointConfig
from drivers.planner import plan_meter
from drivers.reply_decoder import ReplyDecoder, _whole_reply, decode_point
from tests.rtu_sim import inline_meter

TYPES = sorted(FORMATS)


@st.composite
def meters(draw: st.DrawFn, same_order: bool):
    order = draw(st.sampled_from(ORDERS))
    points, register = [], draw(st.integers(0, 20))
    for i in range(draw(st.integers(1, 14))):
        type_ = draw(st.sampled_from(TYPES))
        points.append(PointConfig(name=f"p{i}", register=register, type=type_,  # type: ignore[arg-type]
                                  order=order if same_order else draw(st.sampled_from(ORDERS)),  # type: ignore[arg-type]
                                  scale=draw(st.sampled_from([1.0, 0.01, 10.0])),
                                  offset=draw(st.sampled_from([0.0, -5.0]))))
        register += REGISTERS[type_] + draw(st.integers(0, 3))
    if draw(st.booleans()):
        points.reverse()  # listed out of address order: planned in address order
    return inline_meter("m", 1, points)


def reference(meter, request, registers, ts):
    return [decode_point(meter, request, p, registers, ts) for p in request.points]


def same(a, b) -> bool:
    return (a.point, a.ts, a.quality) == (b.point, b.ts, b.quality) and (
        a.value == b.value or (a.value is not None and b.value is not None
                               and math.isnan(a.value) and math.isnan(b.value)))


@settings(max_examples=300, deadline=None)
@given(meter=st.one_of(meters(same_order=True), meters(same_order=False)), data=st.data())
def test_decoded_equals_point_by_point(meter, data) -> None:
    decoder = ReplyDecoder()
    for request in plan_meter(meter):
        registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=request.count, max_size=request.count))
        got = decoder.decoded(meter, request, registers, 1234)
        want = reference(meter, request, registers, 1234)
        assert len(got) == len(want)
        assert all(same(a, b) for a, b in zip(got, want, strict=True)), (got, want)


@settings(max_examples=300, deadline=None)
@given(meter=st.one_of(meters(same_order=True), meters(same_order=False)), data=st.data())
def test_decoded_meter_reads_as_decoded(meter, data) -> None:
    """The executor's common path: a request covering the meter in order becomes a MeterPoll
    when every point is GOOD, and reads exactly as `decoded`'s list either way."""
    decoder = ReplyDecoder()
    for request in plan_meter(meter):
        if not decoder.covers_in_order(request, meter):
            continue
        registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=request.count, max_size=request.count))
        got = decoder.decoded_meter(meter, request, registers, 1234)
        want = decoder.decoded(meter, request, registers, 1234)
        assert len(got) == len(want)
        assert all(same(a, b) for a, b in zip(got, want, strict=True)), (got, want)
        assert isinstance(got, MeterPoll) == all(r.quality == Quality.GOOD for r in want)


def test_nan_and_infinity_from_the_meter_are_gaps() -> None:
    points = [PointConfig(name=f"p{i}", register=2 * i, type="u32" if i < 6 else "f32")  # type: ignore[arg-type]
              for i in range(12)]
    meter = inline_meter("m", 1, points)
    (request,) = plan_meter(meter)
    regs = [0, 1] * 6 + [0x7FC0, 0] * 3 + [0x7F80, 0] * 3  # NaN, then +inf
    got = ReplyDecoder().decoded(meter, request, regs, 1)
    assert [r.quality for r in got] == [Quality.GOOD] * 6 + [Quality.INVALID] * 6
    assert [r.value for r in got] == [1.0] * 6 + [None] * 6


def test_a_meter_poll_is_the_list_of_its_readings() -> None:
    points = [PointConfig(name=f"p{i}", register=2 * i, type="u32") for i in range(3)]  # type: ignore[arg-type]
    meter = inline_meter("m", 1, points)
    (request,) = plan_meter(meter)
    decoder = ReplyDecoder()
    poll = decoder.decoded_meter(meter, request, [0, 1, 0, 2, 0, 3], 7)
    listed = decoder.decoded(meter, request, [0, 1, 0, 2, 0, 3], 7)
    assert isinstance(poll, MeterPoll)
    assert poll == listed and listed == poll and list(poll) == listed
    assert poll[1] == listed[1] and poll[-1] == listed[-1] and poll[1:] == listed[1:]
    assert len(poll) == 3 and poll != listed[:2] and poll != "m"
    assert poll + listed == listed + poll == listed * 2
    assert [r.value for r in poll] == [1.0, 2.0, 3.0] and {r.quality for r in poll} == {Quality.GOOD}


def test_a_reply_in_one_byte_order_is_unpacked_whole() -> None:
    """The usual meter (one plain byte order, gaps allowed) takes one unpack per reply;
    word-swapped or mixed orders go point by point. Both read as `decoded` (above)."""
    def whole(*specs: tuple[str, str, int]) -> bool:
        points = [PointConfig(name=f"p{i}", register=r, type=t, order=o)  # type: ignore[arg-type]
                  for i, (t, o, r) in enumerate(specs)]
        (request,) = plan_meter(inline_meter("m", 1, points))
        return _whole_reply(request.points, request.start) is not None

    assert whole(("u32", "ABCD", 0), ("f32", "ABCD", 2), ("u16", "CDAB", 7))  # 16-bit CDAB is plain
    assert whole(("u32", "DCBA", 0), ("s16", "BADC", 4))
    assert not whole(("u32", "ABCD", 0), ("u32", "DCBA", 2))
    assert not whole(("u32", "CDAB", 0))
