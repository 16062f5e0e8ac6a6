"""Every shipped DL/T 645 and CJ/T 188 profile, read through its driver from a simulated meter
built from the same file: each point comes back GOOD with the value the meter holds."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import Quality
from drivers.factory import open_driver
from drivers.model import BusConfig, MeterConfig
from drivers.profiles import load_profile, profile_names
from hil.serial_pair import serial_pair
from hil.sim_di import DiLine, di_meter

DI_PROFILES = [n for n in profile_names() if load_profile(n).profile.protocol != "modbus"]


def test_at_least_two_of_each() -> None:
    protocols = [load_profile(n).profile.protocol for n in DI_PROFILES]
    assert protocols.count("dlt645") >= 2 and protocols.count("cjt188") >= 2


@pytest.mark.parametrize("name", DI_PROFILES)
def test_di_profile_round_trips(name: str) -> None:
    protocol = load_profile(name).profile.protocol
    address = "123456789012" if protocol == "dlt645" else "12345678901234"

    async def go() -> None:
        sim = di_meter("m", address, protocol, profile=name)
        meter = MeterConfig(name="m", bus="b", address=address, frame=sim.frame, profile=name)
        meter.points = list(sim.points)
        with serial_pair() as (meter_side, agent_side):
            line = await DiLine(meter_side, [sim], protocol).start()
            driver = open_driver(BusConfig(name="b", kind=protocol, device=agent_side, parity="N",
                                           timeout=0.3, retries=0))
            try:
                readings = list(await driver.read(meter))
            finally:
                await driver.close()
                await line.stop()
        assert len(readings) == len(meter.points)
        for r in readings:
            p = next(p for p in meter.points if p.name == r.point)
            assert r.quality == Quality.GOOD, r
            assert sim.matches(r.point, r.ts, f"{r.value:.{p.value_decimals}f}"), (r, sim.true_value(r.point, r.ts))
    asyncio.run(go())
