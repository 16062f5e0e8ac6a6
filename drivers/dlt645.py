"""DL/T 645-2007 reader: bus kind `dlt645` (Chinese multi-function electricity meters, RS-485).

Reads one DI per request (11h). A 91h reply carries the value; B1h says more frames follow,
fetched with 12h and a sequence number until a reply without the "more" bit (at most
MAX_FOLLOW_UPS); D1h carries an error byte, named in the log and the health record, and the
DI's points become EXCEPTION gaps. Frames and values: drivers/dlt645_frame.py, di_layout.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drivers.base import Quality
from drivers.bcd import address_bytes, address_text
from drivers.di_driver import DiDriver, RequestFailed
from drivers.dlt645_frame import (
    READ,
    READ_ADDRESS,
    READ_FOLLOW_UP,
    WILDCARD,
    Frame,
    di_bytes,
    error_text,
    find_frame,
    follow_up_request,
    read_address_request,
    read_request,
)

if TYPE_CHECKING:
    from drivers.di_layout import DiRequest
    from drivers.model import MeterConfig

MAX_FOLLOW_UPS = 8  # a read of one DI never needs more; a meter asking for more is broken


class Dlt645Driver(DiDriver):
    protocol = "dlt645"

    async def read_di(self, meter: MeterConfig, request: DiRequest) -> bytes:
        address = address_bytes(meter.address or "", 6)
        preamble = b"\xfe" * self.frame_options(meter).preamble
        di = request.di
        echo = di_bytes(di)[::-1]

        def ours(function: int) -> Callable[[Frame], bool]:
            # A normal reply echoes the DI: one for another DI is a late answer to an earlier
            # request (or another master's), skipped while ours is awaited. An error reply
            # carries no DI.
            return lambda f: (f.is_reply and f.address == address and f.function == function
                              and (f.abnormal or f.data[:4] == echo))

        frame: Frame = await self.transact(read_request(address, di, preamble), find_frame,
                                           ours(READ), request.where, 16 + request.data_bytes)
        values = self._values(frame, echo, request)
        seq = 1
        while frame.more:
            if seq > MAX_FOLLOW_UPS:
                raise RequestFailed(f"more than {MAX_FOLLOW_UPS} follow-up frames for {request.where}"
                                    " — the meter keeps asking to be read on", Quality.CORRUPT, answered=True)
            try:
                frame = await self.transact(follow_up_request(address, di, seq, preamble), find_frame,
                                            ours(READ_FOLLOW_UP), f"{request.where} frame {seq + 1}")
            except RequestFailed as e:
                # The meter did answer the read: a lost follow-up leaves this DI incomplete,
                # it does not make the meter silent.
                raise RequestFailed(e.what, Quality.CORRUPT if e.quality == Quality.TIMEOUT else e.quality,
                                    answered=True) from None
            chunk = self._values(frame, echo, request)
            # A follow-up reply ends with its sequence number.
            if not chunk or chunk[-1] != seq & 0xFF:
                raise RequestFailed(f"follow-up frame {seq} for {request.where} carries sequence "
                                    f"{chunk[-1] if chunk else 'none'}", Quality.CORRUPT, answered=True)
            values += chunk[:-1]
            seq += 1
        return values

    @staticmethod
    def _values(frame: Frame, echo: bytes, request: DiRequest) -> bytes:
        if frame.abnormal:
            code = frame.data[0] if frame.data else 0
            raise RequestFailed(f"error reply {frame.control:02X}h reading {request.where}: "
                                f"{error_text(code)} — check the profile's DIs against the meter",
                                Quality.EXCEPTION, answered=True)
        if frame.data[:4] != echo:
            raise RequestFailed(f"reply to {request.where} carries DI {frame.data[:4][::-1].hex().upper()}",
                                Quality.CORRUPT, answered=True)
        return frame.data[4:]

    def address_query(self) -> tuple[bytes, Callable[[bytearray], tuple[Any, int]], Callable[[Any], bool]]:
        return (read_address_request(), find_frame,
                lambda f: f.is_reply and f.function == READ_ADDRESS and f.address != WILDCARD)

    def address_found(self, frame: Frame) -> str:
        if len(frame.data) != 6:
            raise RequestFailed(f"read-address reply carries {len(frame.data)} bytes, not 6",
                                Quality.CORRUPT, answered=True)
        return address_text(frame.data)
