"""CJ/T 188-2004/2018 reader: bus kind `cjt188` (heat, water and gas meters; RS-485 or M-Bus
through a converter).

Reads data (01h) one DI per request, normally 901F whose reply holds every field the profile
maps; 81h carries the values, C1h an abnormal reply with the meter's status bytes (its points
become EXCEPTION gaps). Each request carries a sequence byte (SER) the meter echoes. Frames and
layouts: drivers/cjt188_frame.py; values and unit codes: di_layout.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drivers.base import Quality
from drivers.bcd import address_bytes, address_text
from drivers.cjt188_frame import (
    READ_ADDRESS,
    READ_DATA,
    WILDCARD,
    Frame,
    find_frame,
    read_address_request,
    read_request,
    reply_values,
    status_text,
)
from drivers.di_driver import DiDriver, RequestFailed

if TYPE_CHECKING:
    from drivers.di_layout import DiRequest
    from drivers.model import MeterConfig


class Cjt188Driver(DiDriver):
    protocol = "cjt188"
    _ser = 0

    async def read_di(self, meter: MeterConfig, request: DiRequest) -> bytes:
        opts = self.frame_options(meter)
        address = address_bytes(meter.address or "", 7)
        meter_type = int(opts.meter_type or "10", 16)
        self._ser = (self._ser + 1) & 0xFF
        echoes = (bytes.fromhex(request.di), bytes.fromhex(request.di)[::-1])
        raw = read_request(meter_type, address, request.di, self._ser, opts.di_order, opts.preamble)
        frame: Frame = await self.transact(
            raw, find_frame,
            lambda f: (f.is_reply and f.address == address and f.function == READ_DATA
                       and (f.abnormal or f.data[:2] in echoes)),  # a late reply to another DI: skipped
            request.where, 16 + request.data_bytes)
        if frame.abnormal:
            raise RequestFailed(f"error reply {frame.control:02X}h reading {request.where}: meter "
                                f"{status_text(frame.data[-2:])} — check the DI and the meter type "
                                f"({meter_type:02X}h)", Quality.EXCEPTION, answered=True)
        try:
            return reply_values(frame, request.di, opts.ser)
        except ValueError as e:
            raise RequestFailed(f"reply to {request.where}: {e}", Quality.CORRUPT, answered=True) from None

    def address_query(self) -> tuple[bytes, Callable[[bytearray], tuple[Any, int]], Callable[[Any], bool]]:
        return (read_address_request(), find_frame,
                lambda f: f.is_reply and f.function == READ_ADDRESS and f.address != WILDCARD)

    def address_found(self, frame: Frame) -> str:
        return f"{address_text(frame.address)} type {frame.meter_type:02X}"
