"""Keeping a late Modbus reply from being taken for the answer to a later request."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymodbus.client.base import ModbusBaseClient

log = logging.getLogger("drivers.modbus")


def discard_input(client: ModbusBaseClient) -> None:
    """Drop every received byte not yet matched to a request: what the kernel holds for a
    serial port and pymodbus's own receive buffer."""
    ctx: Any = getattr(client, "ctx", None)
    if ctx is None:
        return
    port = getattr(getattr(ctx, "transport", None), "sync_serial", None)
    if port is not None:
        try:
            port.reset_input_buffer()
        except Exception as e:  # best effort: a port that cannot flush fails its next request
            log.debug("could not flush the serial input: %s", e)
    ctx.recv_buffer = b""


class LineGuard:
    """Keeps a late reply from ever being taken for the answer to a later request.

    An RTU reply names only the unit and the function, so after a request went unanswered (or
    was answered by a frame that did not fit it, or was resent by pymodbus) the meter may
    still be sending, and pymodbus would take that frame for the answer to whatever is sent
    next to the same unit — shifting every value by one reply, all marked GOOD. Modbus TCP's
    transaction id protects only against servers that stamp a reply with its own request's
    id: pymodbus's server, and TCP/RTU gateways whose serial side timed out, stamp the id of
    the request pending when the reply goes out. So, on every Modbus bus, the next request
    to that unit first waits until `window` seconds after the last copy of the unanswered
    request went out (two timeouts: a meter that missed its timeout answers within about
    another one, if at all), then discards whatever arrived. Requests to other units need no
    wait: pymodbus's framers skip frames from a unit other than the one asked, and a
    collision on the wire fails the CRC (a gap). A silent meter therefore still costs one
    timeout per cycle unless the very next request goes to the same unit; a healthy line
    never waits.
    """

    def __init__(self, timeout: float) -> None:
        self.window = 2 * timeout
        self._until: dict[int, float] = {}  # unit -> monotonic time its late replies are over
        self.waits = 0  # how often a request had to wait, for tests and status

    def unsettled(self, unit: int, sent_at: float) -> None:
        """A request to `unit` went out at `sent_at` (monotonic); its reply may still come."""
        self._until[unit] = max(sent_at + self.window, self._until.get(unit, 0.0))

    async def clear(self, client: ModbusBaseClient, unit: int) -> None:
        """Before a request to `unit`: let its late replies arrive, then drop them."""
        until = self._until.pop(unit, None)
        if until is None:
            return
        delay = until - time.monotonic()
        if delay > 0:
            self.waits += 1
            await asyncio.sleep(delay)
        discard_input(client)
