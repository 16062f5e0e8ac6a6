"""The DL/T 645 driver against simulated meters on a real pty pair: values, faults, follow-up
frames, roll-over, error bytes, checksums and address discovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from drivers.base import MeterError, Quality
from drivers.dlt645 import Dlt645Driver
from drivers.model import BusConfig, MeterConfig, PointConfig
from hil.serial_pair import serial_pair
from hil.sim_di import DiLine, di_meter
from hil.sim_meter import SimMeter

POINTS = [
    PointConfig(name="import_active_energy", di="00010000", unit="kWh", kind="counter"),
    PointConfig(name="voltage_a", di="02010100", unit="V"),
    PointConfig(name="current_a", di="02020100", unit="A"),
    PointConfig(name="power_factor", di="02060000", unit="1"),
]


def bus(device: str, **kw: object) -> BusConfig:
    opts: dict = {"parity": "N", "baud": 9600, "timeout": 0.2, "retries": 0} | kw
    return BusConfig(name="dlt-1", kind="dlt645", device=device, **opts)


def meter_for(sim: SimMeter, points: list[PointConfig] | None = None) -> MeterConfig:
    m = MeterConfig(name=sim.name, bus="dlt-1", address=sim.address, frame=sim.frame)
    m.points = points or list(sim.points)
    return m


@asynccontextmanager
async def line(meters: list[SimMeter], **kw: object) -> AsyncIterator[tuple[str, DiLine]]:
    with serial_pair() as (meter_side, agent_side):
        sim = await DiLine(meter_side, meters, "dlt645", **kw).start()
        try:
            yield agent_side, sim
        finally:
            await sim.stop()


def check_true(sim: SimMeter, readings: list, window_ms: int = 2000) -> None:
    for r in readings:
        assert r.quality == Quality.GOOD, r
        p = next(p for p in sim.points if p.name == r.point)
        text = f"{r.value:.{p.value_decimals}f}"
        assert sim.matches(r.point, r.ts, text, window_ms), (r, sim.true_value(r.point, r.ts))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_reads_every_point_with_its_true_value() -> None:
    async def go() -> None:
        a = di_meter("m1", "123456789012", "dlt645", POINTS)
        b = di_meter("m2", "000000000002", "dlt645", POINTS)
        async with line([a, b]) as (port, _sim):
            driver = Dlt645Driver(bus(port))
            try:
                for sim in (a, b):
                    readings = list(await driver.read(meter_for(sim)))
                    assert [r.point for r in readings] == [p.name for p in POINTS]
                    check_true(sim, readings)
                assert driver.requests_sent == 8  # one DI per request, no retries
            finally:
                await driver.close()
    run(go())


def test_follow_up_frames_are_fetched_and_joined() -> None:
    async def go() -> None:
        a = di_meter("m1", "1", "dlt645", POINTS)
        a.mode = "follow-up"
        async with line([a]) as (port, sim):
            driver = Dlt645Driver(bus(port))
            try:
                readings = list(await driver.read(meter_for(a)))
                check_true(a, readings)
                assert sim.frames_seen == 8  # each DI: a read and one follow-up read
            finally:
                await driver.close()
    run(go())


def test_counter_rolls_over_at_999999_99() -> None:
    async def go() -> None:
        a = di_meter("m1", "1", "dlt645", POINTS[:1], counter_start=999999.0)
        async with line([a]) as (port, _sim):
            driver = Dlt645Driver(bus(port))
            try:
                first = (await driver.read(meter_for(a)))[0]
                await asyncio.sleep(2.1)  # ~0.5 kWh/s: past 999999.99 within two seconds
                second = (await driver.read(meter_for(a)))[0]
            finally:
                await driver.close()
        assert first.value is not None and first.value >= 999999.0
        assert second.value is not None and second.value < 1.0
        assert meter_for(a).points[0].modulus == 1000000.0
    run(go())


def test_silent_meter_costs_one_timeout_and_raises_timeout() -> None:
    async def go() -> None:
        a = di_meter("m1", "1", "dlt645", POINTS)
        a.mode = "silent"
        async with line([a]) as (port, _sim):
            driver = Dlt645Driver(bus(port, retries=1))
            try:
                started = time.monotonic()
                with pytest.raises(MeterError) as e:
                    await driver.read(meter_for(a))
                assert time.monotonic() - started < 1.0  # 2 tries of 0.2 s, not 4 DIs' worth
                assert e.value.quality == Quality.TIMEOUT
                assert "no reply after 2 tries" in str(e.value) and "address 1" in str(e.value)
            finally:
                await driver.close()
    run(go())


def test_error_replies_name_the_error_byte_and_mark_exception() -> None:
    async def go() -> None:
        a = di_meter("m1", "1", "dlt645", POINTS)
        a.mode = "exception"
        a.exception_code = 0x02
        async with line([a]) as (port, _sim):
            driver = Dlt645Driver(bus(port))
            try:
                with pytest.raises(MeterError) as e:
                    await driver.read(meter_for(a))
                assert e.value.quality == Quality.EXCEPTION
                assert "D1h" in str(e.value) and "no such data (02h)" in str(e.value)
                # One DI the meter lacks: its point is an EXCEPTION gap, the rest are GOOD.
                a.mode = "ok"
                extra = [*a.points, PointConfig(name="x", di="00900200", format="XXXXXX.XX")]
                readings = list(await driver.read(meter_for(a, extra)))
                assert [r.quality for r in readings] == [Quality.GOOD] * 4 + [Quality.EXCEPTION]
                assert any("no such data" in w for w in driver.last_failures("m1"))
            finally:
                await driver.close()
    run(go())


def test_bad_checksum_gives_corrupt_gaps_never_values() -> None:
    async def go() -> None:
        a = di_meter("m1", "1", "dlt645", POINTS)
        a.mode = "corrupt"
        async with line([a]) as (port, _sim):
            driver = Dlt645Driver(bus(port))
            try:
                readings = list(await driver.read(meter_for(a)))
                assert {r.quality for r in readings} == {Quality.CORRUPT}
                assert all(r.value is None for r in readings)
                assert "checksum wrong" in driver.last_failures("m1")[0]
            finally:
                await driver.close()
    run(go())


def test_reply_from_another_address_is_not_taken() -> None:
    async def go() -> None:
        # Two meters claim the same address on the wire would collide; instead, a meter that
        # answers for an address it does not have: its frames carry its own, so they are stray.
        a = di_meter("m1", "1", "dlt645", POINTS)
        async with line([a]) as (port, sim):
            driver = Dlt645Driver(bus(port))
            ghost = meter_for(a)
            ghost.address = "2"
            try:
                with pytest.raises(MeterError):
                    await driver.read(ghost)
                assert sim.frames_seen == 1
            finally:
                await driver.close()
    run(go())


def test_address_discovery_on_a_one_meter_line() -> None:
    async def go() -> None:
        a = di_meter("m1", "123456789012", "dlt645", POINTS)
        async with line([a]) as (port, _sim):
            driver = Dlt645Driver(bus(port))
            try:
                assert await driver.read_address() == "123456789012"
            finally:
                await driver.close()
    run(go())


def test_block_di_reads_three_phases_in_one_request() -> None:
    block = [PointConfig(name=f"voltage_{c}", di="0201FF00", at=2 * i, unit="V") for i, c in enumerate("abc")]

    async def go() -> None:
        a = di_meter("m1", "1", "dlt645", block)
        async with line([a]) as (port, sim):
            driver = Dlt645Driver(bus(port))
            try:
                readings = list(await driver.read(meter_for(a)))
                check_true(a, readings)
                assert sim.frames_seen == 1 and driver.requests_sent == 1
                assert len({r.value for r in readings}) == 3
            finally:
                await driver.close()
    run(go())


def test_a_lost_follow_up_frame_leaves_corrupt_gaps_not_a_silent_meter() -> None:
    async def go() -> None:
        a = di_meter("m1", "1", "dlt645", POINTS)
        a.mode = "follow-up-lost"
        async with line([a]) as (port, _sim):
            driver = Dlt645Driver(bus(port))
            try:
                readings = list(await driver.read(meter_for(a)))  # no MeterError: it answered
                assert {r.quality for r in readings} == {Quality.CORRUPT}
                assert "frame 2" in driver.last_failures("m1")[0]
            finally:
                await driver.close()
    run(go())


def test_a_late_reply_is_never_taken_for_the_next_request() -> None:
    async def go() -> None:
        a = di_meter("m1", "1", "dlt645", POINTS)
        a.mode, a.delay = "slow", 0.35
        async with line([a]) as (port, sim):
            driver = Dlt645Driver(bus(port))  # timeout 0.2 s, no retries
            try:
                with pytest.raises(MeterError) as e:
                    await driver.read(meter_for(a))
                assert e.value.quality == Quality.TIMEOUT
                a.mode = "ok"
                # The late answer to DI 00010000 arrives while the voltage is being asked for:
                # it carries another DI, so it is skipped, not decoded as a voltage.
                readings = list(await driver.read(meter_for(a, list(reversed(a.points)))))
                check_true(a, readings)
                assert driver.line.stray_frames == 1 and sim.frames_seen == 5
            finally:
                await driver.close()
    run(go())
