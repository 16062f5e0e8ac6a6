"""The Modbus TCP driver against a real pymodbus server on a free loopback port."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.base import BusFault, MeterError, Quality
from drivers.codec import FORMATS, ORDERS, encode
from drivers.factory import open_driver
from drivers.modbus_tcp import ModbusTcpDriver
from drivers.model import REGISTERS, BusConfig, MeterConfig, PointConfig

VALUES: dict[str, int | float] = {
    "u16": 54321,
    "s16": -12345,
    "u32": 3_000_000_123,
    "s32": -2_000_000_123,
    "u64": 1_234_567_890_123_456,  # below 2**53: exact as a float
    "s64": -1_234_567_890_123_456,
    "f32": 123.456,
    "f64": -98765.4321,
}
PYMODBUS_TYPES = {
    "u16": DataType.UINT16, "s16": DataType.INT16, "u32": DataType.UINT32,
    "s32": DataType.INT32, "u64": DataType.UINT64, "s64": DataType.INT64,
    "f32": DataType.FLOAT32, "f64": DataType.FLOAT64,
}
TYPED_BASE = 1000  # holding registers written by pymodbus's own encoder (big endian, ABCD)


def expected(type_: str) -> float:
    v = VALUES[type_]
    if type_ == "f32":
        return struct.unpack(">f", struct.pack(">f", v))[0]
    return float(v)


def layout(function: str, base: int = 0) -> tuple[list[PointConfig], list[int]]:
    """One point per type × order, packed back to back, and the registers that hold them."""
    points, regs = [], []
    for order in ORDERS:
        for type_ in FORMATS:
            points.append(PointConfig(
                name=f"{function[0]}-{type_}-{order}", register=base + len(regs),
                function=function, type=type_, order=order,  # type: ignore[arg-type]
            ))
            regs.extend(encode(VALUES[type_], type_, order))
    return points, regs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bits() -> list[SimData]:
    return [SimData(0, values=[False] * 16, datatype=DataType.BITS)]


class Meter:
    """A pymodbus TCP server playing one or more meters; counts the requests it receives."""

    def __init__(self, devices: list[SimDevice], port: int | None = None) -> None:
        self.devices = devices
        self.port = port or free_port()
        self.requests = 0
        self.server: ModbusTcpServer | None = None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests += 1
        return pdu

    async def start(self) -> None:
        self.server = ModbusTcpServer(
            self.devices, address=("127.0.0.1", self.port), trace_pdu=self._trace
        )
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


def bus_for(port: int, **kw: Any) -> BusConfig:
    opts: dict[str, Any] = {"timeout": 0.5, "retries": 1} | kw
    return BusConfig(name="lan-1", kind="modbus-tcp", host="127.0.0.1", port=port, **opts)


def meter(points: list[PointConfig], unit: int = 1, **kw: Any) -> MeterConfig:
    m = MeterConfig(name=kw.pop("name", "main-incomer"), bus="lan-1", unit=unit, **kw)
    m.points = points
    m.max_registers = kw.get("max_registers") or 125
    m.max_gap = kw.get("max_gap") if kw.get("max_gap") is not None else 10
    m.pause_ms = kw.get("pause_ms") or 0
    m.connect_pause_ms = 0
    return m


def with_meter(devices: list[SimDevice], body: Callable[[Meter], Awaitable[None]]) -> None:
    async def main() -> None:
        sim = Meter(devices)
        await sim.start()
        try:
            await body(sim)
        finally:
            await sim.stop()

    asyncio.run(main())


def all_types_device() -> tuple[SimDevice, list[PointConfig]]:
    hold_points, hold_regs = layout("holding")
    in_points, in_regs = layout("input", base=50)
    typed, typed_points, at = [], [], TYPED_BASE
    for t in FORMATS:
        typed.append(SimData(at, values=VALUES[t], datatype=PYMODBUS_TYPES[t]))
        typed_points.append(PointConfig(name=f"typed-{t}", register=at, type=t))  # type: ignore[arg-type]
        at += REGISTERS[t]
    device = SimDevice(1, simdata=(
        bits(), bits(),
        [SimData(0, values=hold_regs, datatype=DataType.REGISTERS), *typed],
        [SimData(50, values=in_regs, datatype=DataType.REGISTERS)],
    ))
    return device, hold_points + in_points + typed_points


def test_our_encoder_matches_pymodbus_for_the_orders_it_knows() -> None:
    for type_ in FORMATS:
        dt = AsyncModbusTcpClient.DATATYPE[{"u": "UINT", "s": "INT", "f": "FLOAT"}[type_[0]]
                                           + type_[1:]]
        for order, word_order in (("ABCD", "big"), ("CDAB", "little")):
            theirs = AsyncModbusTcpClient.convert_to_registers(VALUES[type_], dt, word_order)
            assert encode(VALUES[type_], type_, order) == theirs


def test_reads_every_type_and_order_from_holding_and_input_registers() -> None:
    device, points = all_types_device()

    async def body(sim: Meter) -> None:
        driver = ModbusTcpDriver(bus_for(sim.port))
        try:
            readings = await driver.read(meter(points))
        finally:
            await driver.close()
        assert [r.point for r in readings] == [p.name for p in points]
        for r in readings:
            type_ = r.point.split("-")[1]
            assert r.quality == Quality.GOOD, r
            assert r.meter == "main-incomer"
            assert r.value == expected(type_), r
            assert abs(r.ts - time.time() * 1000) < 5000
        # holding 0..79 and 1000..1019 are two requests (gap > 10), input 50..129 one.
        assert driver.requests_sent == sim.requests == 3

    with_meter([device], body)


def twelve_points() -> list[PointConfig]:
    # A profile-like map: 12 float registers pairs, with one 4-register hole mid-way.
    regs = [0, 2, 4, 6, 8, 10, 16, 18, 20, 22, 24, 26]
    return [PointConfig(name=f"v{i}", register=r, type="f32") for i, r in enumerate(regs)]


def twelve_point_device() -> SimDevice:
    regs = [0] * 28
    for i, p in enumerate(twelve_points()):
        regs[p.register : p.register + 2] = encode(float(i) + 0.5, "f32", "ABCD")
    return SimDevice(3, simdata=[SimData(0, values=regs, datatype=DataType.REGISTERS)])


def test_twelve_point_meter_in_minimum_requests() -> None:
    async def body(sim: Meter) -> None:
        driver = open_driver(bus_for(sim.port))
        assert isinstance(driver, ModbusTcpDriver)
        try:
            coalesced = meter(twelve_points(), unit=3)
            readings = await driver.read(coalesced)
            assert [r.value for r in readings] == [i + 0.5 for i in range(12)]
            assert sim.requests == driver.requests_sent == 1
            # No gap merging: the hole splits the map into two requests.
            split = meter(twelve_points(), unit=3, name="split", max_gap=3)
            await driver.read(split)
            assert sim.requests == 3
            # The plan is computed once per meter and reused.
            assert driver.plan(coalesced) is driver.plan(coalesced)
            # Points listed out of address order still come back in the meter's order.
            shuffled = meter(twelve_points()[::-1], unit=3, name="shuffled")
            readings = await driver.read(shuffled)
            assert [(r.point, r.value) for r in readings] == [(f"v{i}", i + 0.5) for i in reversed(range(12))]
        finally:
            await driver.close()

    with_meter([twelve_point_device()], body)


def test_closed_port_is_a_timeout_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()

    async def main() -> None:
        driver = ModbusTcpDriver(bus_for(port))
        start = time.monotonic()
        with pytest.raises(MeterError) as err:
            await driver.read(meter(twelve_points()))
        assert time.monotonic() - start < 3
        assert err.value.quality == Quality.TIMEOUT and not err.value.busy
        # The bus failed, not the meter: the poller logs it once for the bus (BusFault).
        assert isinstance(err.value, BusFault)
        assert f"bus lan-1: cannot connect to 127.0.0.1:{port}" in str(err.value)
        await driver.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info]


def test_silent_unit_and_reconnect_after_server_restart() -> None:
    async def body(sim: Meter) -> None:
        driver = ModbusTcpDriver(bus_for(sim.port, timeout=0.2, retries=0))
        m = meter(twelve_points(), unit=3)
        try:
            assert (await driver.read(m))[0].quality == Quality.GOOD
            await sim.stop()
            with pytest.raises(MeterError) as err:
                await driver.read(m)
            assert err.value.quality == Quality.TIMEOUT
            await sim.start()
            readings = await driver.read(m)
            assert all(r.quality == Quality.GOOD for r in readings)
            assert driver.connects == 2
        finally:
            await driver.close()

    with_meter([twelve_point_device()], body)


def test_partial_failure_gaps_only_the_failed_request() -> None:
    points = [
        PointConfig(name="good", register=0, type="f32"),
        PointConfig(name="missing", register=500, type="u16"),  # not in the device's map
        PointConfig(name="nan", register=2, type="f32"),
        PointConfig(name="inf", register=4, type="f32", scale=1.0),
    ]
    regs = encode(1.25, "f32", "ABCD") + encode(math.nan, "f32", "ABCD") + encode(
        math.inf, "f32", "ABCD")
    device = SimDevice(1, simdata=[SimData(0, values=regs, datatype=DataType.REGISTERS)])

    async def body(sim: Meter) -> None:
        driver = ModbusTcpDriver(bus_for(sim.port))
        try:
            got = {r.point: r for r in await driver.read(meter(points))}
        finally:
            await driver.close()
        assert (got["good"].value, got["good"].quality) == (1.25, Quality.GOOD)
        assert (got["missing"].value, got["missing"].quality) == (None, Quality.EXCEPTION)
        assert (got["nan"].value, got["nan"].quality) == (None, Quality.INVALID)
        assert (got["inf"].value, got["inf"].quality) == (None, Quality.INVALID)

    with_meter([device], body)


def test_busy_meter_raises_busy() -> None:
    async def busy(*_: Any) -> ExcCodes:
        return ExcCodes.DEVICE_BUSY

    device = SimDevice(1, simdata=[SimData(0, values=[1, 2, 3], datatype=DataType.REGISTERS)],
                       action=busy)

    async def body(sim: Meter) -> None:
        driver = ModbusTcpDriver(bus_for(sim.port))
        try:
            with pytest.raises(MeterError) as err:
                await driver.read(meter([PointConfig(name="a", register=0)]))
        finally:
            await driver.close()
        assert err.value.busy and err.value.quality == Quality.EXCEPTION
        assert "busy" in str(err.value)

    with_meter([device], body)


class KeptConnection(ModbusTcpDriver):
    """The TCP driver without its reconnect after a silence. Transaction ids alone would not
    do: pymodbus's server (like a TCP/RTU gateway whose serial side timed out) stamps a late
    reply with the id of the request pending when it goes out; the driver's LineGuard must."""

    reconnect_after_silence = False


@pytest.mark.parametrize("driver_class", [ModbusTcpDriver, KeptConnection])
def test_a_late_reply_is_never_taken_for_the_next_request(driver_class: type) -> None:
    # Register 100 answers 75 ms after the 0.1 s timeout once; the next requests follow at
    # once. Each must get its own value or a gap, never the late frame's value marked GOOD.
    slow = {"extra": 0.075}

    async def late(fc: int, start: int, address: int, count: int, *_: Any) -> None:
        await asyncio.sleep(0.05 + (slow["extra"] if address == 100 else 0.0))

    device = SimDevice(1, simdata=[SimData(0, values=[111], datatype=DataType.REGISTERS),
                                   SimData(100, values=[222], datatype=DataType.REGISTERS)],
                       action=late)
    points = [PointConfig(name="a", register=0), PointConfig(name="b", register=100)]

    async def body(sim: Meter) -> None:
        driver = driver_class(bus_for(sim.port, timeout=0.1, retries=0))
        m = meter(points, max_gap=0)
        cycles = []
        try:
            for _ in range(3):
                cycles.append(await driver.read(m))
                slow["extra"] = 0.0
            await asyncio.sleep(0.1)  # the late frame has surely arrived by now
            cycles.append(await driver.read(m))
        finally:
            await driver.close()
        assert [r.quality for r in cycles[0]] == [Quality.GOOD, Quality.TIMEOUT]
        for rows in cycles[1:]:
            assert [(r.quality, r.value) for r in rows] == [(Quality.GOOD, 111),
                                                            (Quality.GOOD, 222)]
        assert driver.connects == (1 if driver_class is KeptConnection else 2)

    with_meter([device], body)


def test_every_request_refused_raises_with_the_meters_reason() -> None:
    async def refuse(*_: Any) -> ExcCodes:
        return ExcCodes.ILLEGAL_ADDRESS

    device = SimDevice(1, simdata=[SimData(0, values=[1, 2, 3], datatype=DataType.REGISTERS)],
                       action=refuse)

    async def body(sim: Meter) -> None:
        driver = ModbusTcpDriver(bus_for(sim.port))
        try:
            with pytest.raises(MeterError) as err:
                await driver.read(meter([PointConfig(name="a", register=0, type="u32")]))
        finally:
            await driver.close()
        assert err.value.quality == Quality.EXCEPTION and not err.value.busy
        assert str(err.value) == (
            'meter "main-incomer" (bus lan-1, unit 1): exception 2 (illegal data address) '
            "reading holding 0..1 — check the register map (profile) and the function "
            "(holding/input)")
        assert driver.last_failures("main-incomer") == [str(err.value).split(": ", 1)[1]]

    with_meter([device], body)


async def crafted_server(reply: Callable[[int, int, int, int], bytes]) -> asyncio.Server:
    """A Modbus TCP 'meter' that answers each read with reply(function, start, count, tid)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                fc, start, count = struct.unpack(">BHH", pdu[:5])
                body = reply(fc, start, count, tid)
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
        except asyncio.IncompleteReadError:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_a_reply_that_does_not_fit_the_request_is_corrupt() -> None:
    # Register 0 gets one register too many, register 100 an answer to function 4: neither
    # answers the request sent, whatever its transaction id says. Each closes the connection.
    def reply(fc: int, start: int, count: int, tid: int) -> bytes:
        if start == 0:
            return struct.pack(">BB", fc, 2 * (count + 1)) + b"\x00\x01" * (count + 1)
        return struct.pack(">BB", 4, 2 * count) + b"\x00\x02" * count

    async def main() -> None:
        server = await crafted_server(reply)
        port = server.sockets[0].getsockname()[1]
        driver = ModbusTcpDriver(bus_for(port, timeout=0.3, retries=0))
        reasons = []
        try:
            for register in (0, 100):
                rows = await driver.read(meter([PointConfig(name="a", register=register)]))
                assert [(r.quality, r.value) for r in rows] == [(Quality.CORRUPT, None)]
                reasons += driver.last_failures("main-incomer")
        finally:
            await driver.close()
            server.close()
        assert reasons[0].startswith("reply to holding 0..0 broke Modbus TCP framing (byte count 4 "
                                     "in MBAP length 7, expected 2 in 5) — connection closed")
        assert reasons[1].startswith("reply to holding 100..100 broke Modbus TCP framing "
                                     "(function 4, expected 3)")
        assert driver.connects == 2

    asyncio.run(main())
