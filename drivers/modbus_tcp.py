"""Modbus TCP: one TCP connection per bus (one endpoint, one or more unit ids behind it).

Modbus TCP has no checksum: the MBAP header's length is all that delimits a reply. pymodbus's
socket framer re-synchronises on its own — it skips a frame from another unit or transaction,
accepts transaction id 0, and takes exactly `length` bytes whatever follows — so a reply cut
short and spliced with the next one (a faulty gateway or proxy) decodes as a plausible,
wrong value. `StrictMbapFramer` replaces it: anything that is not exactly the answer to the
request just sent closes the connection, discards what was buffered, and fails the request
with `FramingError` (the poll is a CORRUPT gap, never a value).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerSocket

from drivers.modbus import ModbusDriver
from drivers.modbus_requests import FramingError

if TYPE_CHECKING:
    from pymodbus.pdu import DecodePDU, ModbusPDU

    from drivers.model import BusConfig

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
READS = (3, 4)  # read holding / input registers: the reply's byte count is 2 × count
# MBAP length counts the unit id and the PDU: 3 for an exception reply (unit, function, code),
# at most 1 + 253 (the largest PDU, Modbus Application Protocol v1.1b3 §4.1).
MIN_LENGTH, MAX_LENGTH = 3, 254


class StrictMbapFramer(FramerSocket):
    """MBAP framing that refuses instead of re-synchronising (see the module's docstring)."""

    def __init__(self, decoder: DecodePDU, ctx: Any) -> None:
        super().__init__(decoder)
        self.ctx = ctx  # pymodbus's TransactionManager: its pending future and its transport
        self._function = 0
        self._count: int | None = None

    def buildFrame(self, message: ModbusPDU) -> bytes:
        # Every request passes here on its way out: remember what its answer must look like.
        self._function = message.function_code
        self._count = getattr(message, "count", None) if message.function_code in READS else None
        return super().buildFrame(message)

    def handleFrame(
        self, data: bytes, exp_devid: int, exp_tid: int
    ) -> tuple[int, ModbusPDU | None]:
        if len(data) < MBAP.size:
            return 0, None
        tid, pid, length, unit = MBAP.unpack_from(data)
        if pid != 0:
            return self._refuse(data, f"protocol id {pid}, not 0")
        if tid != exp_tid:
            return self._refuse(data, f"transaction id {tid}, expected {exp_tid}")
        if unit != exp_devid:
            return self._refuse(data, f"unit {unit}, expected {exp_devid}")
        if not MIN_LENGTH <= length <= MAX_LENGTH:
            return self._refuse(data, f"MBAP length {length} outside {MIN_LENGTH}..{MAX_LENGTH}")
        end = 6 + length
        if len(data) < end:
            return 0, None  # the rest of the reply is still on its way
        frame, rest = data[:end], data[end:]
        # Bytes beyond the length: the length is wrong (a reply spliced with another), unless
        # they are the same reply again (a request pymodbus resent was answered twice).
        if rest and rest != frame:
            return self._refuse(data, f"{len(rest)} byte(s) beyond MBAP length {length}")
        if problem := self._pdu_problem(frame[7:], length):
            return self._refuse(data, problem)
        try:
            pdu = self.decoder.decode(frame[7:])
        except (ModbusException, struct.error, ValueError, IndexError) as e:
            return self._refuse(data, f"undecodable reply ({e})")
        if pdu is None:
            return self._refuse(data, "undecodable reply")
        pdu.dev_id = unit
        pdu.transaction_id = tid
        return len(data), pdu

    def _pdu_problem(self, pdu: bytes, length: int) -> str | None:
        function = pdu[0]
        if function & 0x7F != self._function:
            return f"function {function & 0x7F}, expected {self._function}"
        if function & 0x80:
            return None if length == 3 else f"exception reply with MBAP length {length}, not 3"
        if self._count is None:
            return None
        want = 2 * self._count
        if len(pdu) < 2 or pdu[1] != want or length != 3 + want:
            got = pdu[1] if len(pdu) > 1 else "no"
            return f"byte count {got} in MBAP length {length}, expected {want} in {3 + want}"
        return None

    def _refuse(self, data: bytes, problem: str) -> tuple[int, None]:
        """Fail the pending request, drop the connection and everything it buffered."""
        future = self.ctx.response_future
        if not future.done():
            future.set_exception(FramingError(problem))
        self.ctx.close()
        return len(data), None


class ModbusTcpDriver(ModbusDriver):
    """Bus kind `modbus-tcp`: MBAP framing to host:port (default 502)."""

    reconnect_after_silence = True

    def __init__(self, bus: BusConfig) -> None:
        if not bus.host:
            raise ValueError(f"bus {bus.name}: modbus-tcp needs a host")
        super().__init__(bus)

    def _new_client(self) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient(self.bus.host or "", port=self.bus.port or 502,
                                      **self.client_options())
        ctx = client.ctx
        ctx.framer = StrictMbapFramer(ctx.framer.decoder, ctx)
        return client

    def endpoint(self) -> str:
        return f"{self.bus.host}:{self.bus.port or 502}"

    def no_reply_hint(self) -> str:
        return f"check the unit id and that {self.endpoint()} serves Modbus TCP"

    def connect_hint(self) -> str:
        return "check the address, the port and the network path to the meter"
