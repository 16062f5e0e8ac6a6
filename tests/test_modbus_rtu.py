"""The Modbus RTU driver over a real serial line (a socat pty pair) and RTU over TCP."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from typing import Any

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.base import MeterError, Quality
from drivers.codec import encode
from drivers.factory import open_driver
from drivers.modbus_rtu import ModbusRtuDriver
from drivers.model import BusConfig, MeterConfig, PointConfig
from hil.serial_pair import serial_pair

# Energy meter-like maps: a u32 energy counter scaled by 0.01 kWh and a few f32 quantities.
POINTS = [
    PointConfig(name="energy", register=0, type="u32", scale=0.01, kind="counter"),
    PointConfig(name="power", register=2, type="f32", order="CDAB"),
    PointConfig(name="voltage", register=4, type="f32", order="BADC"),
    PointConfig(name="pf", register=6, type="s16", scale=0.001),
]


def device(unit: int, energy: int, power: float) -> SimDevice:
    regs = (encode(energy, "u32", "ABCD") + encode(power, "f32", "CDAB")
            + encode(230.5, "f32", "BADC") + encode(-950, "s16", "ABCD"))
    return SimDevice(unit, simdata=[SimData(0, values=regs, datatype=DataType.REGISTERS)])


def rtu_bus(dev: str, **kw: Any) -> BusConfig:
    opts: dict[str, Any] = {"timeout": 0.3, "retries": 1, "parity": "N", "baud": 9600} | kw
    return BusConfig(name="rs485-1", kind="modbus-rtu", device=dev, **opts)


def meter(name: str, unit: int, points: list[PointConfig] | None = None) -> MeterConfig:
    m = MeterConfig(name=name, bus="rs485-1", unit=unit)
    m.points = points or POINTS
    m.max_registers, m.max_gap, m.pause_ms, m.connect_pause_ms = 125, 10, 0, 0
    return m


async def serial_server(port: str, devices: list[SimDevice]) -> ModbusSerialServer:
    server = ModbusSerialServer(devices, port=port, baudrate=9600, parity="N")
    await server.serve_forever(background=True)
    return server


def values(readings: list[Any]) -> dict[str, float | None]:
    return {r.point: r.value for r in readings}


def test_two_meters_on_one_line() -> None:
    async def main(meter_side: str, agent_side: str) -> None:
        server = await serial_server(meter_side, [device(7, 1234567, 11.5), device(9, 42, -3.25)])
        driver = ModbusRtuDriver(rtu_bus(agent_side))
        try:
            boiler = await driver.read(meter("boiler-elec", 7))
            pump = await driver.read(meter("pump-elec", 9))
        finally:
            await driver.close()
            await server.shutdown()
        assert all(r.quality == Quality.GOOD for r in boiler + pump)
        assert values(boiler) == pytest.approx(
            {"energy": 12345.67, "power": 11.5, "voltage": 230.5, "pf": -0.95})
        assert values(pump) == pytest.approx(
            {"energy": 0.42, "power": -3.25, "voltage": 230.5, "pf": -0.95})
        assert {r.meter for r in boiler} == {"boiler-elec"} and {r.meter for r in pump} == {
            "pump-elec"}
        assert driver.requests_sent == 2  # each 8-register map is one request

    with serial_pair() as (a, b):
        asyncio.run(main(a, b))


def test_concurrent_reads_never_overlap_on_the_line() -> None:
    async def main(meter_side: str, agent_side: str) -> None:
        server = await serial_server(meter_side, [device(1, 1, 1.0), device(2, 2, 2.0)])
        driver = open_driver(rtu_bus(agent_side))
        try:
            results = await asyncio.gather(
                *(driver.read(meter(f"m{i}", 1 + i % 2)) for i in range(10))
            )
        finally:
            await driver.close()
            await server.shutdown()
        for i, readings in enumerate(results):
            assert all(r.quality == Quality.GOOD for r in readings)
            assert values(readings)["energy"] == pytest.approx((1 + i % 2) / 100)

    with serial_pair() as (a, b):
        asyncio.run(main(a, b))


def test_exception_reply_gives_exception_gaps_for_that_request_only() -> None:
    points = [*POINTS, PointConfig(name="not-there", register=300, type="u16")]

    async def main(meter_side: str, agent_side: str) -> None:
        server = await serial_server(meter_side, [device(7, 100, 1.0)])
        driver = ModbusRtuDriver(rtu_bus(agent_side))
        try:
            readings = await driver.read(meter("boiler-elec", 7, points))
        finally:
            await driver.close()
            await server.shutdown()
        got = {r.point: r for r in readings}
        assert got["not-there"].quality == Quality.EXCEPTION and got["not-there"].value is None
        assert got["energy"].quality == Quality.GOOD and got["energy"].value == pytest.approx(1.0)

    with serial_pair() as (a, b):
        asyncio.run(main(a, b))


def test_silent_line_is_a_timeout_with_a_useful_message(caplog: pytest.LogCaptureFixture) -> None:
    async def main(agent_side: str) -> None:
        driver = ModbusRtuDriver(rtu_bus(agent_side, timeout=0.2, retries=2))
        start = time.monotonic()
        try:
            with pytest.raises(MeterError) as err:
                await driver.read(meter("boiler-gas", 7, [*POINTS, PointConfig(
                    name="far", register=400)]))
        finally:
            await driver.close()
        elapsed = time.monotonic() - start
        # One unanswered request (3 tries x 0.2 s), not one per request.
        assert 0.55 < elapsed < 1.2
        assert err.value.quality == Quality.TIMEOUT
        assert str(err.value) == (
            'meter "boiler-gas" (bus rs485-1, unit 7): no reply after 3 tries (timeout 0.2 s) '
            "— check wiring, unit id and baud rate"
        )

    with caplog.at_level(logging.WARNING, logger="drivers"), serial_pair() as (_a, b):
        asyncio.run(main(b))
    assert not [r for r in caplog.records if r.exc_info]


def test_missing_serial_device_is_a_timeout() -> None:
    async def main() -> None:
        driver = ModbusRtuDriver(rtu_bus("/dev/does-not-exist-485"))
        with pytest.raises(MeterError) as err:
            await driver.read(meter("boiler-gas", 7))
        assert "cannot connect to /dev/does-not-exist-485 (9600 8N1)" in str(err.value)
        assert err.value.quality == Quality.TIMEOUT

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("how", ["rtu-over-tcp", "pyserial-socket-url"])
def test_rtu_framing_over_tcp(how: str) -> None:
    port = free_port()
    if how == "rtu-over-tcp":
        bus = BusConfig(name="rs485-1", kind="modbus-rtu-over-tcp", host="127.0.0.1", port=port,
                        timeout=0.5)
    else:
        bus = rtu_bus(f"socket://127.0.0.1:{port}")

    async def main() -> None:
        server = ModbusTcpServer([device(5, 777, 2.5)], address=("127.0.0.1", port),
                                 framer=FramerType.RTU)
        await server.serve_forever(background=True)
        driver = open_driver(bus)
        try:
            readings = await driver.read(meter("converter-meter", 5))
        finally:
            await driver.close()
            await server.shutdown()
        assert values(readings) == pytest.approx(
            {"energy": 7.77, "power": 2.5, "voltage": 230.5, "pf": -0.95})

    asyncio.run(main())


def test_pauses_between_requests_and_after_connect() -> None:
    points = [PointConfig(name=f"p{i}", register=r) for i, r in enumerate((0, 40, 80))]
    regs = list(range(100))
    sim = SimDevice(3, simdata=[SimData(0, values=regs, datatype=DataType.REGISTERS)])

    async def main(meter_side: str, agent_side: str) -> None:
        server = ModbusSerialServer([sim], port=meter_side, baudrate=9600, parity="N",
                                    trace_pdu=stamp)
        await server.serve_forever(background=True)
        driver = ModbusRtuDriver(rtu_bus(agent_side))
        m = meter("slow-meter", 3, points)
        m.pause_ms, m.connect_pause_ms = 80, 150
        try:
            start = time.monotonic()
            readings = await driver.read(m)
            await driver.read(m)  # already connected: no connect pause
        finally:
            await driver.close()
            await server.shutdown()
        assert [r.value for r in readings] == [0, 40, 80]
        assert arrivals[0] - start >= 0.15
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert len(arrivals) == 6
        assert all(g >= 0.08 for g in gaps[:2] + gaps[3:])
        assert gaps[2] < 0.08  # the second read starts right away

    arrivals: list[float] = []

    def stamp(sending: bool, pdu: Any) -> Any:
        if not sending:
            arrivals.append(time.monotonic())
        return pdu

    with serial_pair() as (a, b):
        asyncio.run(main(a, b))
