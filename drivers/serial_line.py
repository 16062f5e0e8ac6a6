"""One serial line owned by one driver: open it exclusively, send a frame, wait for the answer.

For the protocols we frame ourselves (DL/T 645, CJ/T 188); Modbus RTU goes through pymodbus.
The port is opened with pyserial (`serial_for_url`, exclusive, so a second program on the same
port fails loudly instead of garbling frames) and read without blocking the event loop. Every
exchange first drops what arrived unasked (late replies, noise), and a reply is only taken
when the caller's `accept` says it answers this request (address, function): frames from
another meter, or late ones, are skipped, so no value is ever shifted onto the wrong request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import termios
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from drivers.dlt645_frame import BadFrame

if TYPE_CHECKING:
    from drivers.model import BusConfig

log = logging.getLogger("drivers.serial_line")

F = TypeVar("F")
MAX_BUFFER = 1024  # bytes kept while looking for a frame; more is noise
POLL_S = 0.005  # for ports without a file descriptor (pyserial URLs)


class LineError(Exception):
    """The port cannot be opened or used; the message says what to check."""


class NoReply(Exception):
    """Nothing that answers the request arrived in time."""


def char_seconds(bus: BusConfig) -> float:
    return (1 + bus.data_bits + (0 if bus.parity == "N" else 1) + bus.stop_bits) / bus.baud


class SerialLine:
    """The port of one bus; closed until the first exchange and reopened after a failure."""

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._port: Any = None
        self._buf = bytearray()
        self.stray_frames = 0  # frames that answered nothing we asked (late, other meters)

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def describe(self) -> str:
        b = self.bus
        return f"{b.device} ({b.baud} {b.data_bits}{b.parity}{b.stop_bits})"

    def open(self) -> None:
        import serial  # pyserial: already a dependency (the Modbus RTU driver uses it)

        b = self.bus
        try:
            self._port = serial.serial_for_url(
                b.device or "", baudrate=b.baud, bytesize=b.data_bits, parity=b.parity,
                stopbits=b.stop_bits, timeout=0, write_timeout=2, exclusive=True,
            )
        except termios.error as e:  # not an OSError: a pty refuses even/odd parity this way
            raise LineError(f"{self.describe()}: the device refuses these serial settings ({e}) "
                            "— a pseudo-terminal takes parity N only") from None
        except (serial.SerialException, OSError, ValueError) as e:
            text = str(e)
            if "lock" in text.lower():
                text = "in use by another program"
            raise LineError(f"cannot open {self.describe()}: {text[:200]} — check the device path, "
                            "its permissions, and that no other program has it open") from None
        self._buf.clear()
        log.info("bus %s: opened %s", b.name, self.describe())

    def close(self) -> None:
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
            self._port = None

    def discard_input(self) -> None:
        self._buf.clear()
        if self._port is not None:
            try:
                while self._port.read(4096):
                    pass
                self._port.reset_input_buffer()
            except Exception as e:  # best effort: a broken port fails the next write
                log.debug("bus %s: could not flush input: %s", self.bus.name, e)

    async def exchange(
        self,
        request: bytes,
        find: Callable[[bytearray], tuple[F | None, int]],
        accept: Callable[[F], bool],
        timeout: float,
        reply_bytes: int = 64,
    ) -> F:
        """Send `request`, return the first frame `accept` takes.

        `find` is a protocol's frame finder. The wait is `timeout` plus the time the request
        and a reply of `reply_bytes` take on the wire at this baud rate (a pty delivers at
        once; a real 2400-baud line does not). Raises NoReply, BadFrame (a frame arrived with
        a wrong checksum) or LineError (the port failed; it is closed and reopened next time).
        """
        if self._port is None:
            self.open()
        self.discard_input()
        try:
            self._port.write(request)
        except Exception as e:
            self.close()
            raise LineError(f"write to {self.describe()} failed: {str(e)[:200]}") from None
        wire = (len(request) + reply_bytes) * char_seconds(self.bus)
        deadline = time.monotonic() + timeout + wire
        while True:
            try:
                frame, used = find(self._buf)
            except BadFrame as e:
                del self._buf[: e.args[1] if len(e.args) > 1 else len(self._buf)]
                raise
            if frame is not None:
                del self._buf[:used]
                if accept(frame):
                    return frame
                self.stray_frames += 1
                continue
            if used:
                del self._buf[:used]
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoReply()
            await self._readable(left)
            self._read_available()

    async def count_more(self, find: Callable[[bytearray], tuple[F | None, int]],
                         accept: Callable[[F], bool], wait: float) -> int:
        """After an answer: how many more frames `accept` takes (or malformed ones: two meters
        talking at once garble each other) arrive within `wait` seconds."""
        deadline = time.monotonic() + wait
        more = 0
        while True:
            try:
                frame, used = find(self._buf)
            except BadFrame as e:
                del self._buf[: e.args[1] if len(e.args) > 1 else len(self._buf)]
                more += 1
                continue
            if frame is not None:
                del self._buf[:used]
                more += bool(accept(frame))
                continue
            if used:
                del self._buf[:used]
            left = deadline - time.monotonic()
            if left <= 0:
                return more
            await self._readable(left)
            self._read_available()

    def _read_available(self) -> None:
        try:
            data = self._port.read(4096)
        except Exception as e:
            self.close()
            raise LineError(f"read from {self.describe()} failed: {str(e)[:200]}") from None
        if data:
            self._buf += data
            if len(self._buf) > MAX_BUFFER:
                del self._buf[: len(self._buf) - MAX_BUFFER]

    async def _readable(self, limit: float) -> None:
        """Until the port has bytes to read, or `limit` seconds passed."""
        try:
            fd = self._port.fileno()
        except Exception:
            await asyncio.sleep(min(POLL_S, limit))
            return
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, limit)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
