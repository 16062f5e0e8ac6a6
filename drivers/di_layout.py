"""Points read by data identifier (DL/T 645, CJ/T 188): resolving, planning and decoding them.

Pure. A DI point names its data identifier; where its value sits in the DI's reply (`at`),
its BCD pattern (`format`), its sign and whether a CJ/T 188 unit code follows are filled in
on load from the standard's tables (drivers/dlt645_dis.py, drivers/cjt188_frame.py) unless the
profile states them — so the driver reads only resolved points. Both protocols read one DI
per request; points sharing a DI (the fields of CJ/T 188's 901F, a DL/T 645 block DI) are read
by one request, in the order the meter's points first name them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from drivers.bcd import bcd_to_int, parse_format
from drivers.cjt188_frame import DI_CURRENT, convert_unit, fields_for
from drivers.dlt645_dis import KNOWN_DIS
from drivers.model import FrameOptions, PointConfig

DEFAULT_FRAME = FrameOptions()


class ShortReply(ValueError):
    """The DI's data ends before the point's value does."""


def resolve_point(p: PointConfig, protocol: str, frame: FrameOptions | None) -> PointConfig | str:
    """The point with at/format/signed/unit_code filled in, or one line saying what is wrong."""
    if p.di is None:
        return f"required for a {protocol} point (its data identifier), instead of register"
    if p.register is not None:
        return f"a {protocol} point is read by its di; remove register"
    fill: dict[str, object] = {}
    if protocol == "dlt645":
        if len(p.di) != 8:
            return f"expected 8 hex digits like 00010000 (DI3 DI2 DI1 DI0), got {p.di!r}"
        if p.field is not None or p.unit_code:
            return "field and unit_code are CJ/T 188 settings"
        known = KNOWN_DIS.get(p.di.upper())
        if p.format is None:
            if known is None:
                return f"DI {p.di} is not in the built-in table: give its format (e.g. XXXXXX.XX)"
            fill["format"] = known.format
        if p.signed is None:
            fill["signed"] = known.signed if known else False
        fill["unit_code"] = False
    else:
        if len(p.di) != 4:
            return f"expected 4 hex digits like 901F, got {p.di!r}"
        meter_type = int((frame or DEFAULT_FRAME).meter_type or "10", 16)
        if p.field is not None:
            if p.di.upper() != DI_CURRENT:
                return f"named fields belong to DI {DI_CURRENT}; give at and format for DI {p.di}"
            layout = fields_for(meter_type)
            f = layout.get(p.field)
            if f is None:
                return (f"no field {p.field!r} for meter type {meter_type:02X}h "
                        f"(fields: {', '.join(layout)})")
            fill.update(at=f.at if p.at is None else p.at, format=p.format or f.format,
                        unit_code=f.unit_code if p.unit_code is None else p.unit_code)
        elif p.format is None or p.at is None:
            return "give field (for 901F) or at and format"
        if p.signed is None:
            fill["signed"] = False
        if p.unit_code is None and "unit_code" not in fill:
            fill["unit_code"] = False
    if p.at is None and "at" not in fill:
        fill["at"] = 0
    p = msgspec.structs.replace(p, **fill) if fill else p
    try:
        length, _ = parse_format(p.format or "")
    except ValueError as e:
        return str(e)
    if (p.at or 0) + length + (1 if p.unit_code else 0) > 250:
        return "the value ends past the largest reply (250 bytes)"
    if p.kind == "counter" and p.modulus is None and not p.signed and p.format and p.format[0] == "X":
        # A BCD counter wraps after its last digit: XXXXXX.XX at 999999.99 -> modulus 1000000.
        _, decimals = parse_format(p.format)
        p = msgspec.structs.replace(p, modulus=10 ** (2 * length - decimals) * p.scale)
    return p


@dataclass(frozen=True)
class DiRequest:
    """One read of one DI covering `points`; `data_bytes`: the value bytes the points need."""

    di: str
    points: tuple[PointConfig, ...]
    data_bytes: int

    @property
    def where(self) -> str:
        return f"DI {self.di}"


def value_end(p: PointConfig) -> int:
    length, _ = parse_format(p.format or "")
    return (p.at or 0) + length + (1 if p.unit_code else 0)


def plan_dis(points: Sequence[PointConfig]) -> list[DiRequest]:
    """One request per distinct DI, in the order the points first name them."""
    groups: dict[str, list[PointConfig]] = {}
    for p in points:
        if p.di is None:
            raise ValueError(f"point {p.name!r} has no di")
        groups.setdefault(p.di.upper(), []).append(p)
    return [DiRequest(di, tuple(ps), max(value_end(p) for p in ps)) for di, ps in groups.items()]


def describe_di_plan(plan: Sequence[DiRequest]) -> list[str]:
    """One line per request, for check-config: `DI 00010000 (4 data bytes, 1 point)`."""
    return [f"DI {r.di} ({r.data_bytes} data bytes, {len(r.points)} point"
            f"{'s' if len(r.points) != 1 else ''})" for r in plan]


def decode_point(values: bytes, p: PointConfig, value_order: str = "low-first") -> float:
    """The point's engineering value from its DI's value bytes. Raises ShortReply, NotBcd, or
    ValueError (an unknown or unfitting CJ/T 188 unit code)."""
    length, decimals = parse_format(p.format or "")
    at = p.at or 0
    end = at + length
    if len(values) < end + (1 if p.unit_code else 0):
        raise ShortReply(f"reply has {len(values)} data bytes, the value needs {end + bool(p.unit_code)}")
    value = bcd_to_int(values[at:end], value_order == "low-first", bool(p.signed)) / 10**decimals
    if p.unit_code:
        value = convert_unit(value, values[end], p.unit)
    return value * p.scale + p.offset
