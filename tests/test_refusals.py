"""A meter that refuses part of a merged request: the refused points are found by splitting
the request, the meter's other points stay GOOD on every poll, and the log says so once.

Real parts: the Modbus TCP driver and a pymodbus server on a loopback port; the poller's and
the driver's clocks are moved by hand so the cooldown passes instantly.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from agent.runtime.poller import BusPoller
from drivers.base import Quality
from drivers.codec import encode
from drivers.model import PointConfig
from drivers.planner import plan_reads
from tests.test_poller import REGISTERS, Clock, CountingDriver, Server, Sink, cycle, run

POINTS = [
    PointConfig(name="energy", register=0, type="u32", scale=0.01, kind="counter"),
    PointConfig(name="power_factor", register=10, type="s16", scale=0.001),
    PointConfig(name="voltage", register=20, type="u16", scale=0.1),
]


class RefuseRegister:
    """A SimDevice action refusing (exception 2) every read that includes `register`."""

    def __init__(self, register: int | None) -> None:
        self.register = register
        self.requests: list[tuple[int, int]] = []

    async def act(self, _fc: int, _start: int, address: int, count: int, *_: Any) -> ExcCodes | None:
        self.requests.append((address, count))
        if self.register is not None and address <= self.register < address + count:
            return ExcCodes.ILLEGAL_ADDRESS
        return None


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_one_refused_address_in_a_merged_request_costs_that_point_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert len(plan_reads(POINTS, 125, 10)) == 1  # all three in one request: holding 0..20
    refusal = RefuseRegister(10)
    plans: list[tuple[str, list[str] | None]] = []

    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        driver.clock = clock
        poller.on_plan = lambda meter, plan: plans.append((meter, plan))
        h = poller.health["m"]
        for _ in range(30):
            clock.advance(1)
            rows = {r.point: r for r in await cycle(poller)}
            assert rows["energy"].quality == Quality.GOOD
            assert rows["energy"].value == pytest.approx(12345.67)
            assert rows["voltage"].quality == Quality.GOOD
            assert rows["voltage"].value == pytest.approx(230.1)
            assert rows["power_factor"].quality == Quality.EXCEPTION
            assert rows["power_factor"].value is None
        assert h.online and h.consecutive_failures == 0
        # One line when the refusal was found, none for the 29 polls after it.
        lines = warnings(caplog)
        assert len(lines) == 1, lines
        assert "power_factor" in lines[0] and "exception 2" in lines[0]
        assert "holding 10..10" in lines[0]
        # Found once by splitting (0..20, then 0..1 and 10..20, then 10 and 20), then read
        # as two requests a poll without asking for register 10 again.
        assert refusal.requests[:5] == [(0, 21), (0, 2), (10, 11), (10, 1), (20, 1)]
        assert refusal.requests[5:] == [(0, 2), (20, 1)] * 29
        assert plans == [("m", ["holding 0..1 (2 registers, 1 points)", "holding 20..20 (1 registers, 1 points)",
                                "refused power_factor: exception 2 (illegal data address) reading holding "
                                "10..10 — check the register map (profile) and the function (holding/input)"])]

        # At the cooldown the configured plan is tried again: still refused, still quiet.
        refusal.requests.clear()
        clock.advance(60)
        await cycle(poller)
        assert refusal.requests[0] == (0, 21)
        assert len(warnings(caplog)) == 1 and len(plans) == 1
        # The meter is reconfigured: after the next cooldown the point is read in the
        # merged request again, and that is logged once.
        refusal.register = None
        clock.advance(60)
        for _ in range(4):
            clock.advance(1)
            rows = {r.point: r for r in await cycle(poller)}
            assert {r.quality for r in rows.values()} == {Quality.GOOD}
        assert refusal.requests[-1] == (0, 21)
        assert plans[-1] == ("m", None)
        ended = [r.getMessage() for r in caplog.records if "read again" in r.getMessage()]
        assert len(ended) == 1 and "power_factor" in ended[0]

    caplog.set_level(logging.INFO)
    run(body, points=POINTS, refusal=refusal, cooldown=60.0)  # type: ignore[arg-type]


def test_a_point_that_fails_decoding_costs_that_point_only(caplog: pytest.LogCaptureFixture) -> None:
    points = [*POINTS[:1], PointConfig(name="current", register=10, type="f32"), POINTS[2]]
    registers = list(REGISTERS)
    registers[10:12] = encode(math.nan, "f32", "ABCD")

    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        for _ in range(20):
            clock.advance(1)
            rows = {r.point: r.quality for r in await cycle(poller)}
            assert rows == {"energy": Quality.GOOD, "current": Quality.INVALID, "voltage": Quality.GOOD}
        assert poller.health["m"].online
        lines = warnings(caplog)
        assert len(lines) == 1 and "current" in lines[0] and "NaN" in lines[0], lines

    caplog.set_level(logging.INFO)
    run(body, points=points, registers=registers)


class Silence:
    """A SimDevice action that holds every reply past the driver's timeout: a silent meter
    behind a working gateway (the bus itself is fine)."""

    def __init__(self) -> None:
        self.on = False

    async def act(self, *_: Any) -> None:
        if self.on:
            await asyncio.sleep(0.5)


def test_a_silent_meter_polled_100_times_logs_a_handful_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    silence = Silence()

    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        silence.on = True
        for _ in range(100):
            clock.advance(5)  # 100 polls over 500 s, cooldown 60 s: 3 failures, then probes
            await cycle(poller)
        assert not poller.health["m"].online
        assert driver.reads < 15
        silence.on = False
        clock.advance(60)
        await asyncio.sleep(0.6)  # the last late reply is over
        await cycle(poller)
        assert poller.health["m"].online

    caplog.set_level(logging.DEBUG, logger="agent")
    caplog.set_level(logging.DEBUG, logger="drivers")
    run(body, refusal=silence, cooldown=60.0)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.INFO and r.name.startswith(("agent", "drivers"))]
    # connected; failing; offline; back online (and perhaps a reconnect).
    assert 2 <= len(lines) <= 5, lines


def test_an_unreachable_meter_polled_100_times_logs_a_handful_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        await server.stop()
        for _ in range(100):
            clock.advance(5)  # 100 polls over 500 s, cooldown 60 s: 3 failures, then probes
            await cycle(poller)
        assert not poller.health["m"].online
        await server.start()
        clock.advance(60)
        await cycle(poller)
        assert poller.health["m"].online

    caplog.set_level(logging.DEBUG, logger="agent")
    caplog.set_level(logging.DEBUG, logger="drivers")
    run(body, cooldown=60.0)
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.INFO and r.name.startswith(("agent", "drivers"))]
    # the bus cannot be reached (one line), it works again (one line), the meter is back.
    assert 1 <= len(lines) <= 5, lines


def test_a_silent_meter_is_polled_after_its_healthy_line_mate() -> None:
    """Listed first on the line, a silent meter still never delays the meter after it: from
    its first failure on it is read last, and its cooldown probes come after the others."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    from drivers.modbus_tcp import ModbusTcpDriver
    from drivers.model import BusConfig, MeterConfig
    from hil.broker import free_port

    asked: list[tuple[int, float]] = []

    def act_for(unit: int, silent: bool) -> Any:
        async def act(*_: Any) -> None:
            asked.append((unit, time.monotonic()))
            if silent:
                await asyncio.sleep(0.5)
        return act

    async def main() -> list[list[int]]:
        port = free_port()
        devices = [SimDevice(u, simdata=[SimData(0, values=REGISTERS, datatype=DataType.REGISTERS)],
                             action=act_for(u, u == 1)) for u in (1, 2)]
        server = ModbusTcpServer(devices, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        bus = BusConfig(name="b", kind="modbus-tcp", host="127.0.0.1", port=port, timeout=0.3,
                        retries=0, offline_after=3, offline_cooldown=60)
        meters = []
        for u in (1, 2):
            m = MeterConfig(name=f"m{u}", bus="b", unit=u)
            m.points = POINTS[:1]
            m.max_registers, m.max_gap, m.pause_ms, m.connect_pause_ms = 125, 10, 0, 0
            meters.append(m)
        clock = Clock()
        driver = ModbusTcpDriver(bus)
        poller = BusPoller(bus, meters, driver, Sink(), clock=clock)
        orders = []
        try:
            for _ in range(8):
                clock.advance(20)
                asked.clear()
                await poller.poll_once()
                orders.append([u for u, _ in asked])
                await asyncio.sleep(0.6)  # the silent meter's late reply is over
        finally:
            await driver.close()
            await server.shutdown()
        return orders

    orders = asyncio.run(main())
    assert orders[0] == [1, 2]  # the first cycle: config order, m1 not known to fail yet
    # From then on the healthy meter is asked first; m1 only while failing or due a probe.
    assert all(o[0] == 2 for o in orders[1:]), orders
    assert [1 in o for o in orders] == [True, True, True, False, False, True, False, False], orders
