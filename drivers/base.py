"""The interface every meter protocol shares, and the reading it produces."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol, overload

import msgspec

if TYPE_CHECKING:
    from drivers.model import MeterConfig


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


class MeterPoll(Sequence[Reading]):
    """One meter's samples from one reply that read all its points in the meter's order, each
    a usable number: what nearly every poll is. It holds the values as one tuple instead of a
    Reading per point — the store packs that tuple as it is (buffer/polls.py), and on a
    100-meter site that saves building and taking apart 1200 Readings a second — and reads as
    the equal list of GOOD Readings to anything that iterates or indexes it.
    """

    __slots__ = ("meter", "points", "ts", "values")

    def __init__(self, meter: str, points: tuple[str, ...], ts: int, values: tuple[float, ...]) -> None:
        self.meter = meter
        self.points = points
        self.ts = ts
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, i: int) -> Reading: ...
    @overload
    def __getitem__(self, i: slice) -> list[Reading]: ...
    def __getitem__(self, i: int | slice) -> Reading | list[Reading]:
        if isinstance(i, slice):
            return list(self)[i]
        return Reading(self.meter, self.points[i], self.ts, self.values[i])

    def __iter__(self) -> Iterator[Reading]:
        meter, ts = self.meter, self.ts
        return (Reading(meter, p, ts, v) for p, v in zip(self.points, self.values, strict=True))

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a list, so unhashable like one

    def __add__(self, other: Sequence[Reading]) -> list[Reading]:
        return [*self, *other]

    def __radd__(self, other: Sequence[Reading]) -> list[Reading]:
        return [*other, *self]

    def __repr__(self) -> str:
        return f"MeterPoll({list(self)!r})"


class MeterError(Exception):
    """A meter (not the bus task) failed this cycle. Expected in the field: log one line, no trace.

    `quality` says which kind of gap the failed points become; `busy` marks Modbus exception 6,
    which is retried later rather than counted towards taking the meter offline.
    """

    def __init__(self, message: str, quality: Quality = Quality.TIMEOUT, busy: bool = False,
                 code: int | None = None):
        super().__init__(message)
        self.quality = quality
        self.busy = busy
        self.code = code  # the Modbus exception code the meter answered with, if it did


class BusFault(MeterError):
    """The bus itself failed (cannot open the port or connect to the endpoint, or the port
    refuses the line settings): every meter on it fails alike, so it is one condition of the
    bus, not one per meter. The message names the bus, not a meter."""

    def __init__(self, bus: str, detail: str, quality: Quality = Quality.TIMEOUT) -> None:
        super().__init__(f"bus {bus}: {detail}", quality)
        self.detail = detail  # without the bus's name: a meter's health record carries it


class Driver(Protocol):
    """One bus (a serial line or a TCP endpoint). The caller reads one meter at a time.

    `read` returns one Reading per configured point of the meter, in point order (a list, or a
    MeterPoll when every point was read in one reply and is GOOD). A request that failed while
    others succeeded yields gap readings for its points; if the meter did not answer at all,
    `read` raises MeterError and the caller records the gaps. `last_failures` says why the
    failed requests of the meter's last read failed, so that reason reaches its health record.
    """

    async def read(self, meter: MeterConfig) -> Sequence[Reading]: ...

    def last_failures(self, meter: str) -> list[str]:
        """One line per failed request of `meter`'s last read (without the meter's label)."""
        ...

    async def close(self) -> None: ...
