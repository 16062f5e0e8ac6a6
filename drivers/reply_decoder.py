"""Turning the registers of an answered Modbus request into Readings.

How each point of a request is decoded (struct format, byte offset) is worked out once per
planned request and reused every poll: on a 100-meter site this runs 100 times a second.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from operator import add, mul
from typing import TYPE_CHECKING, Any

from drivers.base import MeterPoll, Quality, Reading
from drivers.codec import FORMATS, apply_scale, decode, is_usable
from drivers.model import REGISTERS

if TYPE_CHECKING:
    from drivers.model import MeterConfig, PointConfig
    from drivers.planner import ReadRequest

# (name, unpack_from or None, byte offset, point): how to decode one point of a request's reply.
_PointDecoder = tuple[str, Any, int, "PointConfig"]

_GOOD = Quality.GOOD


def _byte_order(type: str, order: str) -> str | None:
    """struct's byte-order prefix for the orders that are plain big or little endian over the
    whole value (ABCD, DCBA; and every order of a 16-bit type); None for word-swapped orders,
    which go through codec.decode. Either gives exactly codec.decode's result."""
    count = REGISTERS[type]
    if order == "ABCD" or (count == 1 and order == "CDAB"):
        return ">"
    if order == "DCBA" or (count == 1 and order == "BADC"):
        return "<"
    return None


@functools.cache  # 8 types x 4 orders at most: one Struct each, not one per configured point
def _unpacker(type: str, order: str) -> Any:
    """struct's unpack_from for one point (see _byte_order), or None."""
    prefix = _byte_order(type, order)
    return None if prefix is None else struct.Struct(prefix + FORMATS[type]).unpack_from


def _whole_reply(points: Sequence[PointConfig], start: int) -> Any:
    """One unpack_from for a whole reply: every point in one plain byte order, in address
    order without overlaps (gaps are skipped as pad bytes); None otherwise."""
    orders = {_byte_order(p.type, p.order) for p in points}
    if len(orders) != 1 or None in orders:
        return None
    fmt, pos = [], 0
    for p in points:
        offset = 2 * (p.register - start)
        if offset < pos:
            return None
        code, count = FORMATS[p.type], REGISTERS[p.type]
        fmt.append("x" * (offset - pos) + code)
        pos = offset + 2 * count
    return struct.Struct(orders.pop() + "".join(fmt)).unpack_from


class _Entry:
    """What is known about one planned request: its decoders, and whether it reads exactly
    its meter's points in the meter's order (for the `points` list it was checked against)."""

    __slots__ = ("covers", "names", "offsets", "points", "request", "scales", "table", "whole", "wire")

    def __init__(self, request: ReadRequest) -> None:
        self.request = request
        self.table: list[_PointDecoder] = [
            (p.name, _unpacker(p.type, p.order), 2 * (p.register - request.start), p)
            for p in request.points
        ]
        self.names = tuple(p.name for p in request.points)
        self.wire = struct.Struct(f">{request.count}H").pack
        self.whole = _whole_reply(request.points, request.start)
        self.scales = tuple(p.scale for p in request.points)
        self.offsets = tuple(p.offset for p in request.points)
        self.points: list[PointConfig] | None = None
        self.covers = False


class ReplyDecoder:
    def __init__(self) -> None:
        # id(request) -> its entry; the entry holds the request, so the id cannot be reused
        # by another request while the entry exists.
        self._entries: dict[int, _Entry] = {}

    def _entry(self, request: ReadRequest) -> _Entry:
        entry = self._entries.get(id(request))
        if entry is None or entry.request is not request:
            entry = self._entries[id(request)] = _Entry(request)
        return entry

    def covers_in_order(self, request: ReadRequest, meter: MeterConfig) -> bool:
        """Whether `request` reads exactly the meter's points, in the meter's order."""
        entry = self._entry(request)
        points = meter.points
        if entry.points is not points:
            entry.points = points
            entry.covers = len(request.points) == len(points) and all(
                a is b for a, b in zip(request.points, points, strict=True))
        return entry.covers

    def decoded(
        self, meter: MeterConfig, request: ReadRequest, registers: list[int], ts: int
    ) -> list[Reading]:
        """A Reading per point of an answered request, in the request's point order:
        decode_point's result, with one struct call per point on the reply's bytes instead
        of codec.decode's per-value permutation."""
        try:
            wire: bytes | None = struct.pack(f">{len(registers)}H", *registers)
        except struct.error:  # not 16-bit values: leave the masking to codec.decode
            wire = None
        name = meter.name
        isfinite = math.isfinite
        out: list[Reading] = []
        append = out.append
        for pname, unpack, byte_offset, point in self._entry(request).table:
            if unpack is None or wire is None:
                append(decode_point(meter, request, point, registers, ts))
                continue
            value = unpack(wire, byte_offset)[0] * point.scale + point.offset  # apply_scale
            if isfinite(value):
                append(Reading(name, pname, ts, value, _GOOD))
            else:
                append(Reading(name, pname, ts, None, Quality.INVALID))
        return out

    def decoded_meter(
        self, meter: MeterConfig, request: ReadRequest, registers: list[int], ts: int
    ) -> Sequence[Reading]:
        """`decoded` for a request that reads exactly the meter's points in its order (see
        covers_in_order): a MeterPoll when every value is a usable number, else the list."""
        entry = self._entry(request)
        try:
            wire = entry.wire(*registers)
        except struct.error:  # not 16-bit values, or not request.count of them
            return self.decoded(meter, request, registers, ts)
        values: Sequence[float]
        listed: list[float]
        if entry.whole is not None:  # the usual meter: one byte order throughout
            # raw × scale + offset (apply_scale), point by point, in C
            values = tuple(map(add, map(mul, entry.whole(wire), entry.scales), entry.offsets))
        else:
            values = listed = []
            append = listed.append
            for _, unpack, byte_offset, point in entry.table:
                if unpack is None:  # a word-swapped order
                    append(point_value(request, point, registers))
                else:
                    append(unpack(wire, byte_offset)[0] * point.scale + point.offset)
        total = sum(values)
        if total - total != 0.0:  # a NaN or an infinity somewhere (rare): gaps, point by point
            return self.decoded(meter, request, registers, ts)
        return MeterPoll(meter.name, entry.names, ts, tuple(values))


def point_value(request: ReadRequest, point: PointConfig, registers: list[int]) -> float:
    """The engineering value of one point of a reply, through codec.decode (any order)."""
    offset = point.register - request.start
    return apply_scale(decode(registers[offset : offset + point.count], point.type, point.order), point)


def decode_point(
    meter: MeterConfig, request: ReadRequest, point: PointConfig, registers: list[int], ts: int
) -> Reading:
    value = point_value(request, point, registers)
    if not is_usable(value):
        return Reading(meter.name, point.name, ts, None, Quality.INVALID)
    return Reading(meter.name, point.name, ts, value, Quality.GOOD)
