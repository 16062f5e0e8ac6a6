"""Modbus TCP: one TCP connection per bus (one endpoint, one or more unit ids behind it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus import ModbusDriver

if TYPE_CHECKING:
    from drivers.model import BusConfig


class ModbusTcpDriver(ModbusDriver):
    """Bus kind `modbus-tcp`: MBAP framing to host:port (default 502)."""

    reconnect_after_silence = True

    def __init__(self, bus: BusConfig) -> None:
        if not bus.host:
            raise ValueError(f"bus {bus.name}: modbus-tcp needs a host")
        super().__init__(bus)

    def _new_client(self) -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(self.bus.host or "", port=self.bus.port or 502,
                                    **self.client_options())

    def endpoint(self) -> str:
        return f"{self.bus.host}:{self.bus.port or 502}"

    def no_reply_hint(self) -> str:
        return f"check the unit id and that {self.endpoint()} serves Modbus TCP"

    def connect_hint(self) -> str:
        return "check the address, the port and the network path to the meter"
