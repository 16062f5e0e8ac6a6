"""Every shipped profile round-trips: a meter built from the profile file, read over RTU.

The simulated meter holds a distinct engineering value per point, encoded with the profile's
type, byte order, scale and offset into the profile's function (holding or input — separate
blocks, so a wrong function is an exception, not a lucky read). The agent's RTU driver must
read back exactly what the meter holds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct

import pytest

from drivers.base import Quality, Reading
from drivers.modbus_rtu import ModbusRtuDriver
from drivers.model import PointConfig
from drivers.profiles import load_profile, profile_names
from tests.rtu_sim import device_for, profile_meter, rtu_bus, serial_meters, typical_value

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def expected(point: PointConfig, value: float) -> float:
    """What a meter told to hold `value` really holds: raw = (value - offset) / scale in the
    register type (float32 rounding, or the nearest integer), times scale plus offset."""
    raw = (value - point.offset) / point.scale
    if point.type == "f32":
        raw = struct.unpack(">f", struct.pack(">f", raw))[0]
    elif point.type != "f64":
        raw = round(raw)
    return raw * point.scale + point.offset


def test_profiles_are_shipped() -> None:
    assert len(profile_names()) >= 4


def intended(points: list[PointConfig], negative: bool) -> dict[str, float]:
    """A distinct value per point; with `negative`, signed and float points go below zero."""
    out = {}
    for i, p in enumerate(points):
        v = typical_value(p, i)
        out[p.name] = -v if negative and p.type[0] in "sf" else v
    return out


@pytest.mark.parametrize("negative", [False, True], ids=["typical", "negative"])
@pytest.mark.parametrize("name", [n for n in profile_names() if load_profile(n).profile.protocol == "modbus"])
def test_profile_round_trips_over_rtu(name: str, negative: bool) -> None:
    meter = profile_meter("m", 9, name)
    values = intended(meter.points, negative)
    assert len(set(values.values())) == len(values), "values must be distinct per point"
    device = device_for(9, meter.points, values, meter.max_registers or 125, meter.max_gap or 10)

    async def main() -> list[Reading]:
        async with serial_meters([device]) as port:
            driver = ModbusRtuDriver(rtu_bus(port, timeout=0.5))
            try:
                return await driver.read(meter)
            finally:
                await driver.close()

    rows = asyncio.run(main())
    points = {p.name: p for p in meter.points}
    assert [r.point for r in rows] == [p.name for p in meter.points]
    for r in rows:
        p = points[r.point]
        assert r.quality == Quality.GOOD, r
        assert r.value is not None
        want = expected(p, values[p.name])
        if p.type.startswith("f"):
            # The meter holds float32(raw): the driver reports exactly that, scaled.
            assert r.value == want, (p.name, r.value, want)
        else:
            # Scaled integers: exact to the point's decimals.
            assert round(r.value, p.value_decimals) == round(want, p.value_decimals), p.name
            assert math.isclose(r.value, want, rel_tol=0, abs_tol=10 ** -(p.value_decimals + 3))
