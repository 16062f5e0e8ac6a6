"""Simulated Modbus RTU slaves on one end of a pseudo-terminal pair: a shared RS-485 line.

Several `SimMeter`s answer on one `RtuLine`, each by its unit id; a request for a unit
nobody has is met with silence, as on a real bus. Frames are found the way a slave does:
a read request (function 3/4) is exactly 8 bytes with a valid CRC; anything else is
accepted once some prefix has a valid CRC, and garbage is dropped after a silent gap.
With `line_rate=True` each reply waits for what the real line would cost (request and
reply characters at the baud rate, the 3.5-character gaps and the slave's turnaround),
since a pty delivers bytes instantly whatever the baud.
"""

from __future__ import annotations

import asyncio
import logging
import time

from hil.pty_port import PtyPort
from hil.sim_meter import SimMeter, handle_pdu

log = logging.getLogger(__name__)

GARBAGE_GAP_S = 0.05  # a partial frame older than this is noise; ptys have no real gaps


def crc16(data: bytes) -> bytes:
    """Modbus CRC-16 (poly 0xA001, init 0xFFFF), low byte first as sent on the wire."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body)


class RtuLine(PtyPort):
    """The slave side of one serial line: open `device` (a pty), answer for `meters`."""

    label = "rtu line"

    def __init__(
        self,
        device: str,
        meters: list[SimMeter],
        baud: int = 9600,
        char_bits: int = 10,
        line_rate: bool = False,
        turnaround: float = 0.005,
    ) -> None:
        super().__init__(device)
        self.meters = {m.unit: m for m in meters}
        self.baud, self.char_bits = baud, char_bits
        self.line_rate, self.turnaround = line_rate, turnaround
        self.frames_seen = 0
        self.garbage_bytes = 0
        self._buf = bytearray()
        self._last_rx = 0.0
        self._queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._flush: asyncio.TimerHandle | None = None

    async def stop(self) -> None:
        await super().stop()
        if self._flush is not None:
            self._flush.cancel()

    # -- receiving -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        data = self._read()
        if not data:
            return
        self._buf += data
        self._last_rx = time.monotonic()
        self._parse()
        if self._buf:
            loop = asyncio.get_running_loop()
            if self._flush is not None:
                self._flush.cancel()
            self._flush = loop.call_later(GARBAGE_GAP_S, self._drop_stale)

    def _drop_stale(self) -> None:
        if self._buf and time.monotonic() - self._last_rx >= GARBAGE_GAP_S * 0.9:
            self.garbage_bytes += len(self._buf)
            self._buf.clear()

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= 4:
            n = self._frame_length(buf)
            if n == 0:
                return  # maybe more bytes are on their way
            if n < 0:
                # No valid frame starts here: drop a byte and resynchronise.
                self.garbage_bytes += 1
                del buf[:1]
                continue
            unit, pdu = buf[0], bytes(buf[1 : n - 2])
            del buf[:n]
            self.frames_seen += 1
            self._queue.put_nowait((unit, pdu))

    @staticmethod
    def _frame_length(buf: bytearray) -> int:
        """Length of the frame at buf[0]: >0 found, 0 need more bytes, -1 not a frame start."""
        if buf[1] in (3, 4):
            if len(buf) < 8:
                return 0
            return 8 if crc16(bytes(buf[:6])) == bytes(buf[6:8]) else -1
        for n in range(4, min(len(buf), 256) + 1):
            if crc16(bytes(buf[: n - 2])) == bytes(buf[n - 2 : n]):
                return n
        return 0 if len(buf) < 256 else -1

    # -- answering -------------------------------------------------------------------------

    async def _answer_loop(self) -> None:
        while True:
            unit, pdu = await self._queue.get()
            meter = self.meters.get(unit)
            if meter is None or meter.mode == "silent":
                continue  # nobody at that address, or a dead meter: silence
            if meter.mode == "slow":
                await asyncio.sleep(meter.delay)
            reply = frame(unit, handle_pdu(meter, pdu, int(time.time() * 1000)))
            meter.requests += 1
            if meter.mode == "corrupt":
                reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
            if self.line_rate:
                await asyncio.sleep(self.wire_seconds(len(pdu) + 3, len(reply)))
            self._write(reply)

    def wire_seconds(self, request_bytes: int, reply_bytes: int) -> float:
        """What the exchange costs on a real line at this baud (the pty costs nothing)."""
        char = self.char_bits / self.baud
        gap = 0.00175 if self.baud > 19200 else 3.5 * char
        return (request_bytes + reply_bytes) * char + 2 * gap + self.turnaround
