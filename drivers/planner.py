"""Read planning: which Modbus requests read a meter's points in as few round trips as possible.

Pure and computed once per meter. On a 9600-baud RS-485 line each request costs tens of
milliseconds of turnaround and framing, so the number of requests is the bus budget: adjacent
points are merged into one request, also across small unused gaps (reading a few unused
registers is cheaper than another round trip), up to the meter's register limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from drivers.model import MeterConfig, PointConfig

MODBUS_MAX_REGISTERS = 125  # a read holding/input registers reply carries at most 250 bytes


@dataclass(frozen=True)
class ReadRequest:
    """One read request: `count` registers from `start`, covering `points` entirely."""

    function: str  # "holding" (0x03) or "input" (0x04)
    start: int
    count: int
    points: tuple[PointConfig, ...]

    @property
    def end(self) -> int:
        """One past the last register read."""
        return self.start + self.count

    @cached_property
    def where(self) -> str:
        """How messages name the request: `holding 0..23` (built once, not per poll)."""
        return f"{self.function} {self.start}..{self.end - 1}"


def plan_reads(
    points: Sequence[PointConfig], max_registers: int = 125, max_gap: int = 10
) -> list[ReadRequest]:
    """Group points into requests: per function, by address, merging across gaps ≤ max_gap.

    A request never exceeds max_registers and a point is never split across requests. A point
    larger than max_registers (a u64 on a meter limited to 2 registers) gets a request of its
    own sized to the point, since it cannot be read any other way. Points may overlap (the same
    register read as two types); each is covered once. Requests come out holding first, then
    input, each in address order.
    """
    if max_registers < 1:
        raise ValueError(f"max_registers must be at least 1, got {max_registers}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be 0 or more, got {max_gap}")
    max_registers = min(max_registers, MODBUS_MAX_REGISTERS)
    plan: list[ReadRequest] = []
    for function in ("holding", "input"):
        mine = sorted(
            (p for p in points if p.function == function), key=lambda p: (p.register, p.count)
        )
        plan.extend(_plan_function(function, mine, max_registers, max_gap))
    unknown = {p.function for p in points} - {"holding", "input"}
    if unknown:
        raise ValueError(f"unknown register function(s): {', '.join(sorted(unknown))}")
    return plan


def _plan_function(
    function: str, points: list[PointConfig], max_registers: int, max_gap: int
) -> list[ReadRequest]:
    plan: list[ReadRequest] = []
    group: list[PointConfig] = []
    start = end = 0
    for p in points:
        p_end = p.register + p.count
        if group:
            gap = p.register - end  # negative when p overlaps what the group already reads
            new_end = max(end, p_end)
            if gap <= max_gap and new_end - start <= max_registers:
                group.append(p)
                end = new_end
                continue
            plan.append(ReadRequest(function, start, end - start, tuple(group)))
        group, start, end = [p], p.register, p_end
    if group:
        plan.append(ReadRequest(function, start, end - start, tuple(group)))
    return plan


def covering(function: str, points: Sequence[PointConfig]) -> ReadRequest:
    """The one request that reads exactly the registers from the first to the last of `points`."""
    start = min(p.register for p in points)
    end = max(p.register + p.count for p in points)
    return ReadRequest(function, start, end - start, tuple(points))


def split_request(request: ReadRequest) -> tuple[ReadRequest, ReadRequest]:
    """A refused request's points in two halves, each a request of its own over only its
    points' registers (the unused registers between the halves are no longer read: a meter
    may refuse exactly those). Needs at least two points."""
    if len(request.points) < 2:
        raise ValueError(f"{request.where}: one point cannot be split")
    half = len(request.points) // 2
    return (covering(request.function, request.points[:half]),
            covering(request.function, request.points[half:]))


def describe_plan(plan: Sequence[ReadRequest]) -> list[str]:
    """One line per request, for check-config and logs: `holding 0..11 (12 registers, 6 points)`."""
    return [
        f"{r.function} {r.start}..{r.end - 1} ({r.count} registers, {len(r.points)} points)"
        for r in plan
    ]


def plan_meter(meter: MeterConfig) -> list[ReadRequest]:
    """The plan for a loaded meter, with its resolved limits (defaults if not resolved)."""
    return plan_reads(
        meter.points,
        max_registers=meter.max_registers if meter.max_registers is not None else 125,
        max_gap=meter.max_gap if meter.max_gap is not None else 10,
    )
