"""Pick the driver for a bus kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.base import Driver
    from drivers.model import BusConfig


def open_driver(bus: BusConfig) -> Driver:
    """A driver owning `bus`. Nothing is opened until its first read."""
    if bus.kind == "modbus-tcp":
        from drivers.modbus_tcp import ModbusTcpDriver

        return ModbusTcpDriver(bus)
    if bus.kind in ("modbus-rtu", "modbus-rtu-over-tcp"):
        from drivers.modbus_rtu import ModbusRtuDriver

        return ModbusRtuDriver(bus)
    if bus.kind == "dlt645":
        from drivers.dlt645 import Dlt645Driver

        return Dlt645Driver(bus)
    if bus.kind == "cjt188":
        from drivers.cjt188 import Cjt188Driver

        return Cjt188Driver(bus)
    raise ValueError(f"bus {bus.name}: no driver for kind {bus.kind!r}")
