"""The register codec against pymodbus's own converter, worked examples, and round trips."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from drivers.codec import FORMATS, ORDERS, apply_scale, decode, encode
from drivers.model import REGISTERS, PointConfig

DT = ModbusTcpClient.DATATYPE
PYMODBUS_TYPE = {
    "u16": DT.UINT16, "s16": DT.INT16, "u32": DT.UINT32, "s32": DT.INT32,
    "u64": DT.UINT64, "s64": DT.INT64, "f32": DT.FLOAT32, "f64": DT.FLOAT64,
}
WORD_ORDER = {"ABCD": "big", "CDAB": "little"}
RANGES = {
    "u16": (0, 2**16 - 1), "s16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1), "s32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1), "s64": (-(2**63), 2**63 - 1),
}


def values_for(type_: str) -> st.SearchStrategy[int | float]:
    if type_ == "f32":
        return st.floats(width=32, allow_nan=False)
    if type_ == "f64":
        return st.floats(allow_nan=False)
    lo, hi = RANGES[type_]
    return st.integers(lo, hi)


def test_worked_examples_32_bit() -> None:
    # 0x11223344: A=11 B=22 C=33 D=44
    assert encode(0x11223344, "u32", "ABCD") == [0x1122, 0x3344]
    assert encode(0x11223344, "u32", "CDAB") == [0x3344, 0x1122]
    assert encode(0x11223344, "u32", "BADC") == [0x2211, 0x4433]
    assert encode(0x11223344, "u32", "DCBA") == [0x4433, 0x2211]


def test_worked_examples_64_bit() -> None:
    v = 0x1122334455667788
    assert encode(v, "u64", "ABCD") == [0x1122, 0x3344, 0x5566, 0x7788]
    assert encode(v, "u64", "CDAB") == [0x7788, 0x5566, 0x3344, 0x1122]
    assert encode(v, "u64", "BADC") == [0x2211, 0x4433, 0x6655, 0x8877]
    assert encode(v, "u64", "DCBA") == [0x8877, 0x6655, 0x4433, 0x2211]
    # DCBA is the little-endian byte string read register by register.
    le = struct.pack("<Q", v)
    assert encode(v, "u64", "DCBA") == [int.from_bytes(le[i : i + 2], "big") for i in (0, 2, 4, 6)]


def test_16_bit_orders() -> None:
    assert encode(0x1234, "u16", "ABCD") == encode(0x1234, "u16", "CDAB") == [0x1234]
    assert encode(0x1234, "u16", "BADC") == encode(0x1234, "u16", "DCBA") == [0x3412]
    assert decode([0xFFFF], "s16", "ABCD") == -1


def test_float_example() -> None:
    # 123.456 as IEEE-754 single is 0x42F6E979.
    assert encode(123.456, "f32", "ABCD") == [0x42F6, 0xE979]
    assert decode([0xE979, 0x42F6], "f32", "CDAB") == pytest.approx(123.456, rel=1e-7)
    assert decode([0x79E9, 0xF642], "f32", "DCBA") == pytest.approx(123.456, rel=1e-7)


def test_nan_decodes_as_nan() -> None:
    assert math.isnan(decode([0x7FC0, 0x0000], "f32", "ABCD"))


@pytest.mark.parametrize("order", ["ABCD", "CDAB"])
@pytest.mark.parametrize("type_", list(FORMATS))
@given(data=st.data())
def test_agrees_with_pymodbus(type_: str, order: str, data: st.DataObject) -> None:
    value = data.draw(values_for(type_))
    regs = encode(value, type_, order)
    theirs = ModbusTcpClient.convert_to_registers(value, PYMODBUS_TYPE[type_], WORD_ORDER[order])
    assert regs == theirs
    back = ModbusTcpClient.convert_from_registers(regs, PYMODBUS_TYPE[type_], WORD_ORDER[order])
    assert decode(regs, type_, order) == back


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", list(FORMATS))
@given(data=st.data())
def test_round_trip(type_: str, order: str, data: st.DataObject) -> None:
    value = data.draw(values_for(type_))
    regs = encode(value, type_, order)
    assert len(regs) == REGISTERS[type_]
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(regs, type_, order) == value


def test_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(70000, "u16", "ABCD")
    with pytest.raises(ValueError, match="does not fit"):
        encode(-1, "u32", "ABCD")
    with pytest.raises(ValueError, match="does not fit"):
        encode(1e39, "f32", "ABCD")
    with pytest.raises(ValueError, match="not an integer"):
        encode(1.5, "s32", "ABCD")
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1], "u32", "ABCD")
    with pytest.raises(ValueError, match="byte order"):
        decode([1, 2], "u32", "XYZW")


def test_apply_scale() -> None:
    p = PointConfig(name="e", register=0, type="u32", scale=0.01, offset=-5.0)
    assert apply_scale(123456, p) == pytest.approx(1229.56)
    assert isinstance(apply_scale(7, PointConfig(name="x", register=0)), float)
