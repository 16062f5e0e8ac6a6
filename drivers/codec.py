"""Register codec: Modbus registers <-> numbers, for every data type and byte order we support.

Our own code rather than pymodbus's converters, so that a library upgrade cannot change how
a meter's value is decoded (pymodbus also only knows word swaps, not byte swaps).

Byte orders name where the value's big-endian bytes A (most significant) … D/H land in the
registers as they arrive on the wire (each register is sent high byte first):

=====  ======================================  ===========================  ==================
order  meaning                                 32-bit value ABCD            64-bit ABCDEFGH
=====  ======================================  ===========================  ==================
ABCD   big endian, high word first             [AB, CD]                     [AB, CD, EF, GH]
CDAB   words reversed (word swap)              [CD, AB]                     [GH, EF, CD, AB]
BADC   bytes swapped within each word          [BA, DC]                     [BA, DC, FE, HG]
DCBA   fully reversed (little endian)          [DC, BA]                     [HG, FE, DC, BA]
=====  ======================================  ===========================  ==================

For 16-bit types the word order has nothing to act on: ABCD = CDAB = [AB], BADC = DCBA = [BA].
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from drivers.model import REGISTERS

if TYPE_CHECKING:
    from drivers.model import PointConfig

# type -> struct format character; how many registers each takes is drivers.model.REGISTERS
FORMATS: dict[str, str] = {
    "u16": "H", "s16": "h", "u32": "I", "s32": "i", "u64": "Q", "s64": "q", "f32": "f", "f64": "d",
}
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def _format(type: str) -> tuple[str, int]:
    """(struct format character, registers) of `type`."""
    try:
        return FORMATS[type], REGISTERS[type]
    except KeyError:
        known = ", ".join(FORMATS)
        raise ValueError(f"unknown data type {type!r}, expected one of {known}") from None


def _permute(data: bytes, order: str) -> bytes:
    """Apply the order's permutation. Each one is its own inverse, so this also undoes it."""
    if order not in ORDERS:
        raise ValueError(f"unknown byte order {order!r}, expected one of {', '.join(ORDERS)}")
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return b"".join(words)


def decode(registers: Sequence[int], type: str, order: str) -> int | float:
    """Decode exactly the registers of one value, as read from the meter."""
    fmt, count = _format(type)
    if len(registers) != count:
        raise ValueError(f"a {type} needs {count} registers, got {len(registers)}")
    wire = b"".join(int(r & 0xFFFF).to_bytes(2, "big") for r in registers)
    return struct.unpack(">" + fmt, _permute(wire, order))[0]


def encode(value: int | float, type: str, order: str) -> list[int]:
    """The registers a meter would hold for `value`. Raises ValueError if it does not fit."""
    fmt, _ = _format(type)
    if fmt in "fd":
        try:
            packed = struct.pack(">" + fmt, float(value))
        except OverflowError:
            raise ValueError(f"{value!r} does not fit in a {type}") from None
    else:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not an integer, cannot encode as {type}")
        try:
            packed = struct.pack(">" + fmt, int(value))
        except struct.error:
            raise ValueError(f"{value!r} does not fit in a {type}") from None
    wire = _permute(packed, order)
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


def apply_scale(raw: int | float, point: PointConfig) -> float:
    """The engineering value: raw × scale + offset."""
    return raw * point.scale + point.offset


def is_usable(value: float) -> bool:
    """False for NaN and ±inf, which meters use to say 'no value'."""
    return math.isfinite(value)
