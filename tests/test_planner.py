"""The read planner: worked cases and invariants over random register maps."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import REGISTERS, BusConfig, MeterConfig, PointConfig
from drivers.planner import ReadRequest, describe_plan, plan_reads
from drivers.timing import (
    TCP_REQUEST_SECONDS,
    character_bits,
    cycle_seconds,
    dead_meter_seconds,
    request_seconds,
)

TYPES = list(REGISTERS)


def pt(name: str, register: int, type_: str = "u16", function: str = "holding") -> PointConfig:
    return PointConfig(name=name, register=register, type=type_, function=function)  # type: ignore[arg-type]


def test_contiguous_points_are_one_request() -> None:
    points = [pt(f"p{i}", 100 + 2 * i, "f32") for i in range(12)]
    plan = plan_reads(points)
    assert [(r.function, r.start, r.count, len(r.points)) for r in plan] == [
        ("holding", 100, 24, 12)
    ]


def test_small_gap_merged_large_gap_split() -> None:
    points = [pt("a", 0), pt("b", 11), pt("c", 30)]  # gaps of 10 and 18 registers
    plan = plan_reads(points, max_gap=10)
    assert [(r.start, r.count) for r in plan] == [(0, 12), (30, 1)]
    assert [(r.start, r.count) for r in plan_reads(points, max_gap=0)] == [(0, 1), (11, 1), (30, 1)]


def test_functions_are_planned_separately_and_order_is_holding_then_input() -> None:
    points = [pt("i", 0, function="input"), pt("h", 1), pt("h2", 0)]
    plan = plan_reads(points)
    assert [(r.function, r.start, r.count) for r in plan] == [("holding", 0, 2), ("input", 0, 1)]


def test_max_registers_never_splits_a_point() -> None:
    points = [pt("a", 0, "u32"), pt("b", 2, "u32"), pt("c", 4, "u32")]
    plan = plan_reads(points, max_registers=5)
    assert [(r.start, r.count) for r in plan] == [(0, 4), (4, 2)]


def test_point_larger_than_limit_gets_its_own_request() -> None:
    plan = plan_reads([pt("a", 0, "u64"), pt("b", 4)], max_registers=2)
    assert [(r.start, r.count) for r in plan] == [(0, 4), (4, 1)]


def test_overlapping_points_share_registers() -> None:
    plan = plan_reads([pt("lo", 1), pt("whole", 0, "u32")])
    assert [(r.start, r.count, {p.name for p in r.points}) for r in plan] == [
        (0, 2, {"lo", "whole"})
    ]


def test_limit_is_capped_at_modbus_maximum_and_bad_arguments_refused() -> None:
    points = [pt(f"p{i}", i) for i in range(200)]
    assert [r.count for r in plan_reads(points, max_registers=1000)] == [125, 75]
    with pytest.raises(ValueError):
        plan_reads(points, max_registers=0)
    with pytest.raises(ValueError):
        plan_reads(points, max_gap=-1)


def test_describe_plan() -> None:
    plan = plan_reads([pt("a", 0), pt("b", 3, "f32")])
    assert describe_plan(plan) == ["holding 0..4 (5 registers, 2 points)"]


def test_empty() -> None:
    assert plan_reads([]) == []


# -- invariants ------------------------------------------------------------------------------

point_maps = st.lists(
    st.tuples(
        st.integers(0, 400), st.sampled_from(TYPES), st.sampled_from(["holding", "input"])
    ),
    max_size=40,
).map(lambda specs: [pt(f"p{i}", r, t, f) for i, (r, t, f) in enumerate(specs)])


def check_invariants(
    points: Sequence[PointConfig], plan: list[ReadRequest], max_registers: int, max_gap: int
) -> None:
    covered = [p.name for r in plan for p in r.points]
    assert sorted(covered) == sorted(p.name for p in points)  # every point exactly once
    for r in plan:
        biggest = max(p.count for p in r.points)
        assert r.count <= max(max_registers, biggest)
        assert 1 <= r.count <= 125
        for p in r.points:
            assert p.function == r.function
            assert r.start <= p.register and p.register + p.count <= r.end  # never split
        # The request is no wider than its points need.
        assert r.start == min(p.register for p in r.points)
        assert r.end == max(p.register + p.count for p in r.points)
        # No unread stretch inside a request is longer than max_gap.
        spans = sorted((p.register, p.register + p.count) for p in r.points)
        reach = spans[0][1]
        for s, e in spans[1:]:
            assert s - reach <= max_gap
            reach = max(reach, e)


@settings(max_examples=300)
@given(points=point_maps, max_registers=st.integers(1, 130), max_gap=st.integers(0, 20))
def test_invariants(points: list[PointConfig], max_registers: int, max_gap: int) -> None:
    plan = plan_reads(points, max_registers=max_registers, max_gap=max_gap)
    check_invariants(points, plan, max_registers, max_gap)


def fewest_requests(sizes: tuple[int, ...], limit: int) -> int:
    """Reference optimum by dynamic programming: split a contiguous run of points into the
    fewest consecutive groups each spanning at most `limit` registers."""

    @cache
    def best(i: int) -> int:
        if i == len(sizes):
            return 0
        span, result = 0, len(sizes)
        for j in range(i, len(sizes)):
            span += sizes[j]
            if span > limit and j > i:
                break
            result = min(result, 1 + best(j + 1))
        return result

    return best(0)


@settings(max_examples=300)
@given(
    types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=80),
    max_registers=st.integers(4, 125),
    base=st.integers(0, 1000),
)
def test_contiguous_maps_use_the_minimal_number_of_requests(
    types: list[str], max_registers: int, base: int
) -> None:
    points, reg = [], base
    for i, t in enumerate(types):
        points.append(pt(f"p{i}", reg, t))
        reg += REGISTERS[t]
    plan = plan_reads(points, max_registers=max_registers, max_gap=0)
    check_invariants(points, plan, max_registers, 0)
    assert len(plan) == fewest_requests(tuple(REGISTERS[t] for t in types), max_registers)


# -- what a plan costs on the wire (drivers/timing.py) ---------------------------------------


def rtu(baud: int = 9600, parity: str = "E", **kw: object) -> BusConfig:
    return BusConfig(name="rs485-1", kind="modbus-rtu", device="/dev/ttyS1", baud=baud,
                     parity=parity, **kw)  # type: ignore[arg-type]


def test_line_rate_at_9600_8e1() -> None:
    # 2 registers: 8 + 9 characters of 11 bits, 2 x 3.5 characters of silence, 30 ms turnaround.
    assert request_seconds(rtu(), 2) == pytest.approx((17 + 7) * 11 / 9600 + 0.03)
    assert 1 / request_seconds(rtu(), 2) == pytest.approx(17.4, abs=0.1)
    assert 1 / request_seconds(rtu(), 125) == pytest.approx(2.95, abs=0.01)
    # One 60-register read against 30 two-register reads: ~9x less bus time at 9600.
    assert 30 * request_seconds(rtu(), 2) / request_seconds(rtu(), 60) == pytest.approx(9.06, abs=0.1)


def test_character_framing_and_fast_lines() -> None:
    assert character_bits(rtu(parity="N")) == 10
    assert character_bits(rtu(parity="E", stop_bits=2)) == 12
    assert character_bits(rtu(parity="N", data_bits=7)) == 9
    # Above 19200 baud the silent interval is a fixed 1.75 ms.
    fast = rtu(baud=115200)
    assert request_seconds(fast, 2, turnaround_s=0) == pytest.approx(17 * 11 / 115200 + 0.0035)


def test_tcp_and_rtu_over_tcp_estimates() -> None:
    tcp = BusConfig(name="lan", kind="modbus-tcp", host="10.0.0.5")
    assert request_seconds(tcp, 2) == request_seconds(tcp, 125) == TCP_REQUEST_SECONDS
    over = BusConfig(name="gw", kind="modbus-rtu-over-tcp", host="10.0.0.6")
    assert request_seconds(over, 10) == pytest.approx(request_seconds(rtu(), 10) + TCP_REQUEST_SECONDS)


def test_cycle_and_dead_meter_seconds() -> None:
    m = MeterConfig(name="m", bus="rs485-1")
    m.points = [pt("a", 0, "f32"), pt("b", 2, "f32"), pt("c", 100, "u16")]
    m.max_registers, m.max_gap, m.pause_ms = 125, 10, 50
    bus = rtu(timeout=0.5, retries=2)
    assert cycle_seconds(bus, m) == pytest.approx(
        request_seconds(bus, 4) + request_seconds(bus, 1) + 0.05)
    assert dead_meter_seconds(bus) == pytest.approx(1.5)
