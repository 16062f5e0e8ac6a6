"""The interface every meter protocol shares, and the reading it produces."""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from agent.config import MeterConfig


class Quality(IntEnum):
    """Why a sample is (not) trustworthy. 0 is the only good value; the rest are gaps."""

    GOOD = 0
    TIMEOUT = 1  # no reply within timeout x (retries + 1), or connection failed
    EXCEPTION = 2  # the meter answered with a Modbus exception (or protocol error reply)
    CORRUPT = 3  # a reply arrived but was malformed (CRC, length, framing)
    OFFLINE = 4  # not polled: the meter is in its offline cooldown
    INVALID = 5  # decoded, but not a usable number (NaN, inf)


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One sample of one point. A gap has value None and a quality other than GOOD.

    A msgspec Struct rather than a dataclass: every poll makes one per point (1200 a second
    on a 100-meter site), and a Struct is built in C in a tenth of a frozen dataclass's
    time, without a GC header (it holds no containers, so it can never be part of a cycle).
    """

    meter: str
    point: str
    ts: int  # Unix time in milliseconds (UTC) when the reply arrived
    value: float | None
    quality: Quality = Quality.GOOD


class MeterError(Exception):
    """A meter (not the bus task) failed this cycle. Expected in the field: log one line, no trace.

    `quality` says which kind of gap the failed points become; `busy` marks Modbus exception 6,
    which is retried later rather than counted towards taking the meter offline.
    """

    def __init__(self, message: str, quality: Quality = Quality.TIMEOUT, busy: bool = False):
        super().__init__(message)
        self.quality = quality
        self.busy = busy


class Driver(Protocol):
    """One bus (a serial line or a TCP endpoint). The caller reads one meter at a time.

    `read` returns one Reading per configured point of the meter. A request that failed while
    others succeeded yields gap readings for its points; if the meter did not answer at all,
    `read` raises MeterError and the caller records the gaps. `last_failures` says why the
    failed requests of the meter's last read failed, so that reason reaches its health record.
    """

    async def read(self, meter: MeterConfig) -> list[Reading]: ...

    def last_failures(self, meter: str) -> list[str]:
        """One line per failed request of `meter`'s last read (without the meter's label)."""
        ...

    async def close(self) -> None: ...
