"""Test helpers for RTU meters: real pymodbus serial servers behind a fault relay on socat ptys.

    async with rtu_line([device_for(1, meter.points, values)]) as line:
        driver = ModbusRtuDriver(rtu_bus(line.agent_port))
        line.relay.set_fault(1, "silent")

The register maps come from the same PointConfig lists the agent reads, encoded with the
agent's codec, so a test checks the driver against what a meter built from the profile holds.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.codec import encode
from drivers.model import BusConfig, MeterConfig, PointConfig
from drivers.planner import plan_reads
from drivers.profiles import load_profile
from hil.serial_pair import serial_pair
from hil.serial_relay import SerialRelay

BUS = "rs485-1"

# A typical engineering value per canonical quantity, so that simulated meters look plausible
# to `scan`; each point adds a small distinct offset so no two points hold the same value.
TYPICAL: dict[str, float] = {
    "voltage": 229.5,
    "current": 5.25,
    "frequency": 50.01,
    "power_factor": 0.95,
    "active_power": 12.345,
    "reactive_power": 3.21,
    "import_active_energy": 12345.67,
    "export_active_energy": 234.56,
    "import_reactive_energy": 3456.78,
    "export_reactive_energy": 45.67,
    "flow_rate": 123.4,
    "volume": 98765.4,
}


def rtu_bus(device: str, **kw: Any) -> BusConfig:
    """A modbus-rtu bus on a pty: parity N (ptys refuse even parity), short timeouts."""
    opts: dict[str, Any] = {"baud": 9600, "parity": "N", "timeout": 0.2, "retries": 0} | kw
    return BusConfig(name=BUS, kind="modbus-rtu", device=device, **opts)


def inline_meter(name: str, unit: int, points: Sequence[PointConfig], **kw: Any) -> MeterConfig:
    """A resolved meter with the given points (what load_config would produce)."""
    m = MeterConfig(name=name, bus=BUS, unit=unit)
    m.points = list(points)
    m.max_registers = kw.get("max_registers", 125)
    m.max_gap = kw.get("max_gap", 10)
    m.pause_ms = 0
    m.connect_pause_ms = 0
    m.probe_point = kw.get("probe_point", points[0].name)
    return m


def profile_meter(name: str, unit: int, profile: str) -> MeterConfig:
    """A resolved meter using a shipped profile, with the profile's limits and probe point."""
    prof = load_profile(profile)
    info = prof.profile
    m = inline_meter(name, unit, prof.point, max_registers=info.max_registers,
                     max_gap=info.max_gap, probe_point=info.probe_point)
    m.profile = profile
    return m


def typical_value(point: PointConfig, index: int) -> float:
    base = next((v for k, v in TYPICAL.items() if point.name.startswith(k)), 100.0)
    return base + index * 0.11


def held_value(point: PointConfig, value: float) -> tuple[int | float, float]:
    """(raw, engineering) for `value` as a meter would hold it: raw = (value - offset) / scale,
    rounded to what the register type can carry; engineering = raw × scale + offset."""
    raw: int | float = (value - point.offset) / point.scale
    if point.type == "f32":
        raw = struct.unpack(">f", struct.pack(">f", raw))[0]
    elif point.type != "f64":
        raw = round(raw)
    return raw, raw * point.scale + point.offset


def typical_values(points: Sequence[PointConfig]) -> dict[str, float]:
    """Distinct plausible engineering values, as the meter holds them (after rounding)."""
    return {p.name: held_value(p, typical_value(p, i))[1] for i, p in enumerate(points)}


class Switch:
    """A SimDevice action the test flips: None answers normally, an ExcCodes is replied instead."""

    def __init__(self, code: ExcCodes | None = None) -> None:
        self.code = code
        self.calls = 0

    async def act(self, function_code: int, start_address: int, address: int, count: int,
                  registers: list[int], set_values: Any) -> ExcCodes | None:
        self.calls += 1
        return self.code


def device_for(
    unit: int,
    points: Sequence[PointConfig],
    values: dict[str, float] | None = None,
    max_registers: int = 125,
    max_gap: int = 10,
    action: Switch | None = None,
) -> SimDevice:
    """A SimDevice holding `values` (engineering units; default typical_values) at the points.

    Holding and input registers are separate blocks (pymodbus's 4-block form), as on a real
    meter. Registers the agent's plan reads across (gaps between points) hold 0, since a real
    meter answers for them; anything else is undefined and answers exception 2.
    """
    values = typical_values(points) if values is None else values
    blocks: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
    for request in plan_reads(points, max_registers, max_gap):
        for addr in range(request.start, request.end):
            blocks[request.function][addr] = 0
    for p in points:
        raw, _ = held_value(p, values[p.name])
        for i, reg in enumerate(encode(raw, p.type, p.order)):
            blocks[p.function][p.register + i] = reg
    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    simdata = (list(bits), list(bits), _runs(blocks["holding"]), _runs(blocks["input"]))
    return SimDevice(unit, simdata=simdata, action=action.act if action else None)


def _runs(registers: dict[int, int]) -> list[SimData]:
    """Contiguous register runs as SimData; an empty block gets one far-away placeholder,
    since pymodbus needs every block to hold something."""
    if not registers:
        return [SimData(65000, values=[0], datatype=DataType.REGISTERS)]
    groups: list[list[int]] = []
    for a in sorted(registers):
        if groups and a == groups[-1][-1] + 1:
            groups[-1].append(a)
        else:
            groups.append([a])
    return [
        SimData(g[0], values=[registers[a] for a in g], datatype=DataType.REGISTERS)
        for g in groups
    ]


@dataclass
class Line:
    agent_port: str  # what the driver (or scan) opens
    relay: SerialRelay
    server: ModbusSerialServer


@asynccontextmanager
async def rtu_line(
    devices: list[SimDevice], *, baud: int | None = None, default: str = "pass"
) -> AsyncIterator[Line]:
    """A serial line: agent pty ⇄ relay ⇄ pty with a ModbusSerialServer playing `devices`."""
    async with AsyncExitStack() as stack:
        agent_port, relay_a = stack.enter_context(serial_pair())
        relay_b, meter_port = stack.enter_context(serial_pair())
        server = ModbusSerialServer(
            devices, framer=FramerType.RTU, port=meter_port, baudrate=9600, parity="N"
        )
        await server.serve_forever(background=True)
        stack.push_async_callback(server.shutdown)
        relay = await SerialRelay(relay_a, relay_b, baud=baud, default=default).start()
        stack.push_async_callback(relay.stop)
        yield Line(agent_port, relay, server)


@asynccontextmanager
async def serial_meters(devices: list[SimDevice]) -> AsyncIterator[str]:
    """A plain pty pair, no relay: yields the agent's port; `devices` answer on the other end."""
    with serial_pair() as (agent_port, meter_port):
        server = ModbusSerialServer(
            devices, framer=FramerType.RTU, port=meter_port, baudrate=9600, parity="N"
        )
        await server.serve_forever(background=True)
        try:
            yield agent_port
        finally:
            await server.shutdown()
