"""Modbus RTU: on a serial line (RS-485 port or pyserial URL), or tunnelled over TCP.

`modbus-rtu`: the device is a port (/dev/ttyS1, /dev/ttyUSB0) or any pyserial URL
(`socket://host:port`, `rfc2217://host:port`); pyserial opens it exclusively, so a second
program on the same port fails loudly instead of garbling frames.
`modbus-rtu-over-tcp`: an RS-485/Ethernet converter passes RTU frames (with CRC) unchanged
over a TCP connection; pymodbus's RTU framer runs on a TCP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from drivers.modbus import ModbusDriver

if TYPE_CHECKING:
    from pymodbus.client.base import ModbusBaseClient

    from drivers.model import BusConfig


class ModbusRtuDriver(ModbusDriver):
    """Bus kinds `modbus-rtu` and `modbus-rtu-over-tcp`."""

    def __init__(self, bus: BusConfig) -> None:
        if bus.kind == "modbus-rtu-over-tcp":
            if not bus.host:
                raise ValueError(f"bus {bus.name}: modbus-rtu-over-tcp needs a host")
        elif not bus.device:
            raise ValueError(f"bus {bus.name}: modbus-rtu needs a device")
        super().__init__(bus)

    @property
    def reconnect_after_silence(self) -> bool:  # type: ignore[override]
        return self.over_tcp

    @property
    def over_tcp(self) -> bool:
        return self.bus.kind == "modbus-rtu-over-tcp"

    def _new_client(self) -> ModbusBaseClient:
        if self.over_tcp:
            return AsyncModbusTcpClient(
                self.bus.host or "", port=self.bus.port or 502, framer=FramerType.RTU,
                **self.client_options(),
            )
        return AsyncModbusSerialClient(
            self.bus.device or "",
            framer=FramerType.RTU,
            baudrate=self.bus.baud,
            bytesize=self.bus.data_bits,
            parity=self.bus.parity,
            stopbits=self.bus.stop_bits,
            **self.client_options(),
        )

    def endpoint(self) -> str:
        if self.over_tcp:
            return f"{self.bus.host}:{self.bus.port or 502} (RTU over TCP)"
        b = self.bus
        return f"{b.device} ({b.baud} {b.data_bits}{b.parity}{b.stop_bits})"

    def no_reply_hint(self) -> str:
        if self.over_tcp:
            return "check the converter's serial settings, the wiring, unit id and baud rate"
        return "check wiring, unit id and baud rate"

    def connect_hint(self) -> str:
        if self.over_tcp:
            return "check the converter's address and port and the network path"
        return "check the device path, its permissions, and that no other program has it open"
