"""A fault relay for RS-485 lines: sits between the agent's serial port and the meters' port.

    with serial_pair() as (agent_port, relay_a), serial_pair() as (relay_b, meter_port):
        # the driver opens agent_port; a pymodbus ModbusSerialServer listens on meter_port
        relay = await SerialRelay(relay_a, relay_b, baud=9600).start()
        relay.set_fault(7, "silent")          # unit 7 stops answering
        relay.set_fault(3, "delay", 0.4)      # unit 3 answers 0.4 s late
        ...
        relay.set_fault(7, "pass")            # unit 7 is back
        await relay.stop()

Why a relay rather than faults inside a simulated meter: the meter side can then be a real,
unmodified pymodbus server, and the same fault works against any slave implementation.

Faults, per unit id (the first byte of an RTU frame):

- ``pass``: forward the request and the reply unchanged.
- ``silent``: drop the request; the meter never sees it, the master hears nothing.
- ``corrupt``: flip one bit in the middle of the reply, so its CRC fails.
- ``truncate``: send only the first half of the reply.
- ``delay``: hold the reply back for ``seconds`` (beyond the master's timeout, it arrives
  late, while the master may already be talking to the next meter — as on a real line).

With ``baud`` set, every reply is also held back by the time the request and the reply would
take on a real line at that rate (a pty delivers bytes instantly whatever the baud).
Every request the relay receives is logged (`requests`), including dropped ones, so a test
can count bus traffic per unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass

from hil.sim_rtu import crc16

log = logging.getLogger(__name__)

FAULTS = ("pass", "silent", "corrupt", "truncate", "delay")
# A pty has no inter-character timing, so an incomplete frame is only known to be noise once
# nothing more arrived for a while; then it is passed on as it is, as a wire would.
STALE_FRAME_S = 0.02


@dataclass(frozen=True)
class RelayedRequest:
    """One request frame as the relay saw it."""

    at: float  # time.monotonic() when it arrived
    unit: int
    function: int
    start: int | None  # first register/coil for functions 1–6, 15, 16
    count: int | None  # registers/coils read for functions 1–4
    fault: str  # the fault applied to it


def request_length(buf: bytes | bytearray) -> int:
    """Length of the request frame at buf[0] if it can be told yet, else 0 (need more bytes)."""
    if len(buf) < 2:
        return 0
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else 0
    return _crc_scan(buf)


def reply_length(buf: bytes | bytearray) -> int:
    """Length of the reply frame at buf[0] if it can be told yet, else 0."""
    if len(buf) < 3:
        return 0
    fc = buf[1]
    if fc & 0x80:
        return 5  # exception: unit, function | 0x80, code, CRC
    if fc in (1, 2, 3, 4):
        return 5 + buf[2]
    if fc in (5, 6, 15, 16):
        return 8
    return _crc_scan(buf)


def _crc_scan(buf: bytes | bytearray) -> int:
    """Functions we do not know the shape of: the shortest prefix with a valid CRC."""
    for n in range(4, len(buf) + 1):
        if crc16(bytes(buf[: n - 2])) == bytes(buf[n - 2 : n]):
            return n
    return 0


class _Port:
    """One pty end, raw and non-blocking, read through the event loop; frames split by length."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name
        self.fd = -1
        self.buf = bytearray()
        self.last_rx = 0.0

    def open(self, on_readable: Callable[[], None]) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        asyncio.get_running_loop().add_reader(self.fd, on_readable)

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1

    def read(self) -> bool:
        """Append what is waiting to buf. False once the port is gone."""
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            log.warning("relay %s %s: read failed (%s); port closed", self.name, self.path, e)
            self.close()
            return False
        self.buf += data
        self.last_rx = time.monotonic()
        return True

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, data)
        except OSError as e:
            log.warning("relay %s %s: write failed: %s", self.name, self.path, e)


class SerialRelay:
    """Copies RTU frames between `agent_side` and `meter_side`, applying per-unit faults.

    `agent_side` is the pty whose peer the agent's driver opens; `meter_side` the pty whose
    peer the simulated meters listen on. `default` is the fault of units never configured.
    """

    def __init__(
        self,
        agent_side: str,
        meter_side: str,
        *,
        baud: int | None = None,
        char_bits: int = 10,
        default: str = "pass",
    ) -> None:
        _check_fault(default)
        self.baud, self.char_bits, self.default = baud, char_bits, default
        self.requests: list[RelayedRequest] = []
        self.replies = 0  # reply frames received from the meter side
        self._faults: dict[int, tuple[str, float]] = {}
        self._agent = _Port(agent_side, "agent side")
        self._meter = _Port(meter_side, "meter side")
        # RTU is half duplex: a reply answers the last request forwarded (unit, length, time).
        self._pending: tuple[int, int, float] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control ------------------------------------------------------------------------------

    def set_fault(self, unit: int, fault: str, seconds: float = 0.0) -> None:
        """From now on, treat `unit` with `fault`; `seconds` is the extra delay for "delay"."""
        _check_fault(fault)
        if fault == "delay" and seconds <= 0:
            raise ValueError("fault 'delay' needs seconds > 0")
        self._faults[unit] = (fault, seconds)

    def fault(self, unit: int) -> tuple[str, float]:
        return self._faults.get(unit, (self.default, 0.0))

    def requests_for(self, unit: int) -> list[RelayedRequest]:
        return [r for r in self.requests if r.unit == unit]

    async def start(self) -> SerialRelay:
        self._agent.open(self._on_agent)
        self._meter.open(self._on_meter)
        return self

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._agent.close()
        self._meter.close()

    async def __aenter__(self) -> SerialRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- agent -> meter: requests -------------------------------------------------------------

    def _on_agent(self) -> None:
        if self._agent.read():
            self._split(self._agent, request_length, self._forward_request)

    def _forward_request(self, frame: bytes) -> None:
        unit, fc = frame[0], frame[1] if len(frame) > 1 else 0
        fault, _ = self.fault(unit)
        start = int.from_bytes(frame[2:4], "big") if fc in (1, 2, 3, 4, 5, 6, 15, 16) else None
        count = int.from_bytes(frame[4:6], "big") if fc in (1, 2, 3, 4) else None
        self.requests.append(RelayedRequest(time.monotonic(), unit, fc, start, count, fault))
        if fault == "silent":
            return
        self._pending = (unit, len(frame), time.monotonic())
        self._meter.write(frame)

    # -- meter -> agent: replies --------------------------------------------------------------

    def _on_meter(self) -> None:
        if self._meter.read():
            self._split(self._meter, reply_length, self._deliver_reply)

    def _deliver_reply(self, frame: bytes) -> None:
        self.replies += 1
        pending, self._pending = self._pending, None
        unit, request_len, sent_at = pending if pending else (frame[0], 8, time.monotonic())
        fault, seconds = self.fault(unit)
        if fault == "corrupt":
            mid = len(frame) // 2
            frame = frame[:mid] + bytes([frame[mid] ^ 0x10]) + frame[mid + 1 :]
        elif fault == "truncate":
            frame = frame[: max(1, len(frame) // 2)]
        wait = self.line_seconds(request_len, len(frame)) - (time.monotonic() - sent_at)
        if fault == "delay":
            wait += seconds
        if wait <= 0:
            self._agent.write(frame)
            return
        task = asyncio.get_running_loop().create_task(self._write_later(frame, wait))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_later(self, frame: bytes, wait: float) -> None:
        await asyncio.sleep(wait)
        self._agent.write(frame)

    def line_seconds(self, request_bytes: int, reply_bytes: int) -> float:
        """What the exchange would take on a real line at `baud` (0 without a baud)."""
        if not self.baud:
            return 0.0
        char = self.char_bits / self.baud
        gap = 0.00175 if self.baud > 19200 else 3.5 * char  # the silent interval ending a frame
        return (request_bytes + reply_bytes) * char + 2 * gap

    # -- framing ------------------------------------------------------------------------------

    def _split(
        self, port: _Port, length: Callable[[bytearray], int], handle: Callable[[bytes], None]
    ) -> None:
        buf = port.buf
        while buf:
            n = length(buf)
            if n == 0 or n > len(buf):
                break
            frame = bytes(buf[:n])
            del buf[:n]
            handle(frame)
        if buf:
            # Wait for the rest; if it never comes, pass the fragment on as line noise.
            old = self._timers.pop(port.name, None)
            if old is not None:
                old.cancel()
            loop = asyncio.get_running_loop()
            self._timers[port.name] = loop.call_later(STALE_FRAME_S, self._flush_stale, port)

    def _flush_stale(self, port: _Port) -> None:
        if port.buf and time.monotonic() - port.last_rx >= STALE_FRAME_S * 0.9:
            noise = bytes(port.buf)
            port.buf.clear()
            (self._meter if port is self._agent else self._agent).write(noise)


def _check_fault(fault: str) -> None:
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}, expected one of {', '.join(FAULTS)}")
