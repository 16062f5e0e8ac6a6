"""CJ/T 188-2004/2018 frames (heat, water, gas meters): requests, replies, the 901F layouts.

Pure functions, no I/O (the driver is drivers/cjt188.py). The frame (CJ/T 188 §5):

    FE … | 68 | T | A0 … A6 | C | L | DI0 DI1 SER DATA | CS | 16

- T: meter type — 10h–19h water (10h cold water), 20h/21h heat (heating/cooling), 30h–39h
  gas, 40h electricity.
- A0…A6: the meter address, 14 BCD digits, least significant pair first. No +33h anywhere.
- C: 01h read data, 81h its normal reply, C1h its abnormal reply (bit 6); 03h read address.
- L: bytes of DI + SER + DATA. CS: byte sum mod 256 from 68 through the last data byte.
- Read data uses DI 901F (the current metering data), sent DI0 first (`1F 90`); SER is a
  sequence byte the meter echoes.

The reply to 901F holds, per meter class (CJ/T 188 表 "计量数据"), values as BCD (least
significant byte first) each followed by a unit code where the standard gives one:
water/gas — current cumulative flow, settlement-day cumulative flow, clock, status;
heat — settlement-day heat, current heat, heat power, flow rate, cumulative flow, supply and
return temperature, operating hours, clock, status. Vendors deviate (DI byte order, SER
missing in the reply, decimals, private DIs): those are profile settings (FrameOptions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from drivers.bcd import checksum
from drivers.dlt645_frame import BadFrame, scan

READ_DATA = 0x01
READ_ADDRESS = 0x03
REPLY = 0x80
ABNORMAL = 0x40
FUNCTION = 0x3F
ADDRESS_BYTES = 7
WILDCARD = b"\xaa" * ADDRESS_BYTES
MAX_DATA = 100
DI_CURRENT = "901F"

METER_TYPES = {
    0x10: "cold water", 0x11: "hot water", 0x12: "drinking water", 0x13: "reclaimed water",
    0x20: "heat (heating)", 0x21: "heat (cooling)", 0x30: "gas", 0x40: "electricity",
}

__all__ = ["BadFrame"]


class Field(NamedTuple):
    at: int  # bytes after DI and SER
    format: str
    unit_code: bool  # a unit code byte follows the value


# CJ/T 188 901F layouts. `clock` is YYYYMMDDhhmmss (7 bytes, seconds first on the wire).
WATER_GAS_FIELDS: dict[str, Field] = {
    "current_flow": Field(0, "XXXXXX.XX", True),
    "settlement_flow": Field(5, "XXXXXX.XX", True),
    "clock": Field(10, "YYYYMMDDhhmmss", False),
}
HEAT_FIELDS: dict[str, Field] = {
    "settlement_heat": Field(0, "XXXXXX.XX", True),
    "current_heat": Field(5, "XXXXXX.XX", True),
    "heat_power": Field(10, "XXXXXX.XX", True),
    "flow_rate": Field(15, "XXXX.XXXX", True),
    "cumulative_flow": Field(20, "XXXXXX.XX", True),
    "supply_temperature": Field(25, "XXXX.XX", False),
    "return_temperature": Field(28, "XXXX.XX", False),
    "working_hours": Field(31, "XXXXXX", False),
    "clock": Field(34, "YYYYMMDDhhmmss", False),
}
WATER_GAS_DATA = 19  # bytes after DI and SER: 2 × (4 + 1) + 7 clock + 2 status
HEAT_DATA = 43  # 5 × (4 + 1) + 3 × 3 + 7 clock + 2 status


def is_heat(meter_type: int) -> bool:
    return meter_type in (0x20, 0x21)


def fields_for(meter_type: int) -> dict[str, Field]:
    return HEAT_FIELDS if is_heat(meter_type) else WATER_GAS_FIELDS


# Unit codes (CJ/T 188 单位代号) -> (symbol, dimension, factor to the dimension's base unit:
# kWh for energy, kW for power, m3 for volume, m3/h for flow rate).
UNIT_CODES: dict[int, tuple[str, str, float]] = {
    0x02: ("Wh", "energy", 1e-3), 0x05: ("kWh", "energy", 1.0), 0x08: ("MWh", "energy", 1e3),
    0x0A: ("MWh x100", "energy", 1e5), 0x01: ("J", "energy", 1 / 3.6e6),
    0x0B: ("kJ", "energy", 1 / 3600), 0x0E: ("MJ", "energy", 1 / 3.6),
    0x11: ("GJ", "energy", 1e3 / 3.6), 0x13: ("GJ x100", "energy", 1e5 / 3.6),
    0x14: ("W", "power", 1e-3), 0x17: ("kW", "power", 1.0), 0x1A: ("MW", "power", 1e3),
    0x29: ("L", "volume", 1e-3), 0x2C: ("m3", "volume", 1.0),
    0x32: ("L/h", "flow", 1e-3), 0x35: ("m3/h", "flow", 1.0),
}
# The points' units (as profiles write them) on the same bases.
POINT_UNITS: dict[str, tuple[str, float]] = {
    "Wh": ("energy", 1e-3), "kWh": ("energy", 1.0), "MWh": ("energy", 1e3),
    "MJ": ("energy", 1 / 3.6), "GJ": ("energy", 1e3 / 3.6),
    "W": ("power", 1e-3), "kW": ("power", 1.0), "MW": ("power", 1e3),
    "L": ("volume", 1e-3), "m3": ("volume", 1.0), "L/h": ("flow", 1e-3), "m3/h": ("flow", 1.0),
}


def convert_unit(value: float, code: int, unit: str) -> float:
    """`value` given in unit code `code`, expressed in the point's `unit`. ValueError when the
    code is unknown or measures something else than the unit."""
    known = UNIT_CODES.get(code)
    if known is None:
        raise ValueError(f"unknown unit code {code:02X}h")
    symbol, dimension, factor = known
    target = POINT_UNITS.get(unit)
    if target is None or target[0] != dimension:
        raise ValueError(f"unit code {code:02X}h ({symbol}) cannot be given in {unit or 'no unit'}")
    return value * factor / target[1]


def unit_code_for(unit: str) -> int:
    """The code a meter would send for the point's unit (the simulator's choice)."""
    for code, (symbol, _dim, _f) in UNIT_CODES.items():
        if symbol == unit:
            return code
    raise ValueError(f"no CJ/T 188 unit code for {unit!r}")


@dataclass(frozen=True)
class Frame:
    meter_type: int
    address: bytes
    control: int
    data: bytes  # DI, SER and the values, as sent (no 33h in this standard)

    @property
    def function(self) -> int:
        return self.control & FUNCTION

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY)

    @property
    def abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)


def di_wire(di: str, order: str = "low-first") -> bytes:
    """`901F` as sent: `1F 90` (the standard), or `90 1F` for meters that reverse it."""
    if len(di) != 4:
        raise ValueError(f"expected a DI of 4 hex digits like 901F, got {di!r}")
    raw = bytes.fromhex(di)
    return raw[::-1] if order == "low-first" else raw


def encode_frame(meter_type: int, address: bytes, control: int, data: bytes, preamble: int = 2) -> bytes:
    if len(address) != ADDRESS_BYTES:
        raise ValueError(f"a CJ/T 188 address has 7 bytes, got {len(address)}")
    body = bytes([0x68, meter_type]) + address + bytes([control, len(data)]) + data
    return b"\xfe" * preamble + body + bytes([checksum(body), 0x16])


def read_request(meter_type: int, address: bytes, di: str, ser: int, di_order: str = "low-first",
                 preamble: int = 2) -> bytes:
    """Read data (01h) of one DI, with sequence byte `ser`."""
    return encode_frame(meter_type, address, READ_DATA, di_wire(di, di_order) + bytes([ser & 0xFF]), preamble)


def read_address_request(meter_type: int = 0xAA, preamble: int = 2) -> bytes:
    """Read address (03h, DI 810A) to AA…AA: answered by the only meter on the line."""
    return encode_frame(meter_type, WILDCARD, READ_ADDRESS, b"\x0a\x81\x00", preamble)


def find_frame(buf: bytes | bytearray) -> tuple[Frame | None, int]:
    """The first CJ/T 188 frame in `buf` and how many bytes it used; see dlt645_frame.scan."""
    raw, start = scan(buf, header=11, length_at=10, second_68_at=None, max_data=MAX_DATA)
    if raw is None:
        return None, start
    return Frame(raw[1], raw[2:9], raw[9], raw[11:-2]), start + len(raw)


def parse_frame(raw: bytes) -> Frame:
    """Exactly one frame (preamble allowed). ValueError/BadFrame otherwise."""
    body = raw.lstrip(b"\xfe")
    frame, used = find_frame(body)
    if frame is None or used != len(body):
        raise ValueError(f"not one whole CJ/T 188 frame: {raw[:64].hex(' ')}")
    return frame


def reply_values(frame: Frame, di: str, ser_in_reply: bool = True) -> bytes:
    """The value bytes of a normal reply to `di` (after DI and SER). ValueError when the reply
    is for another DI. The DI is accepted in either byte order: meters differ in the echo."""
    want = bytes.fromhex(di)
    got = frame.data[:2]
    if got not in (want, want[::-1]):
        raise ValueError(f"reply carries DI {got.hex().upper()}, not {di}")
    return frame.data[3:] if ser_in_reply else frame.data[2:]


def status_text(st: bytes) -> str:
    """The status bytes (ST) of an abnormal reply: valve and battery bits (CJ/T 188 状态ST)."""
    if len(st) < 2:
        return f"status {st.hex().upper() or 'missing'}"
    valve = {0: "valve open", 1: "valve closed", 3: "valve abnormal"}.get(st[0] & 0x03, "valve ?")
    battery = ", battery low" if st[0] & 0x04 else ""
    return f"status {st[:2].hex().upper()} ({valve}{battery})"


# -- replies (what a meter sends; used by the simulator and the tests) ----------------------


def read_reply(meter_type: int, address: bytes, di: str, ser: int, values: bytes,
               di_order: str = "low-first", with_ser: bool = True, preamble: int = 2) -> bytes:
    data = di_wire(di, di_order) + (bytes([ser & 0xFF]) if with_ser else b"") + values
    return encode_frame(meter_type, address, REPLY | READ_DATA, data, preamble)


def error_reply(meter_type: int, address: bytes, ser: int, status: bytes, preamble: int = 2) -> bytes:
    """Abnormal reply (C1h): SER and the two status bytes."""
    return encode_frame(meter_type, address, REPLY | ABNORMAL | READ_DATA, bytes([ser & 0xFF]) + status, preamble)


def address_reply(meter_type: int, address: bytes, preamble: int = 2) -> bytes:
    return encode_frame(meter_type, address, REPLY | READ_ADDRESS, b"\x0a\x81\x00", preamble)
