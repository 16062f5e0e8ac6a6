"""What the DL/T 645 and CJ/T 188 drivers share: one owner per serial line, one DI per request,
strictly one after another, and what replies (or silences) mean for each point.

The same rules as the Modbus drivers (drivers/modbus.py): a meter silent on its first request
costs one timeout × tries per cycle and raises MeterError (TIMEOUT), so the poller's
offline/cooldown rules apply unchanged; a request that fails while others succeed leaves gaps
for its own points only; a meter refusing every request raises MeterError (EXCEPTION) with the
reason. `last_failures` names why each failed request failed (error byte, checksum, short
reply). The protocol modules only build requests and take replies apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from drivers.base import MeterError, Quality, Reading
from drivers.bcd import NotBcd
from drivers.di_layout import DEFAULT_FRAME, DiRequest, ShortReply, decode_point, plan_dis
from drivers.dlt645_frame import BadFrame
from drivers.serial_line import LineError, NoReply, SerialLine

if TYPE_CHECKING:
    from drivers.model import BusConfig, FrameOptions, MeterConfig, PointConfig

log = logging.getLogger("drivers.di")
F = TypeVar("F")  # a protocol's frame type


def now_ms() -> int:
    return int(time.time() * 1000)


class RequestFailed(Exception):
    """One request gave no usable data. `answered`: the meter did reply."""

    def __init__(self, what: str, quality: Quality, answered: bool) -> None:
        super().__init__(what)
        self.what = what
        self.quality = quality
        self.answered = answered


class DiDriver(ABC):
    """One DL/T 645 or CJ/T 188 serial line. Requests never overlap; the port opens on first use."""

    protocol = ""

    def __init__(self, bus: BusConfig) -> None:
        if not bus.device:
            raise ValueError(f"bus {bus.name}: {bus.kind} needs a device")
        self.bus = bus
        self.line = SerialLine(bus)
        self._lock = asyncio.Lock()
        self._plans: dict[str, tuple[int, list[DiRequest]]] = {}
        self.failures: dict[str, list[str]] = {}
        self.requests_sent = 0

    # -- what a protocol provides ------------------------------------------------------------

    @abstractmethod
    async def read_di(self, meter: MeterConfig, request: DiRequest) -> bytes:
        """The value bytes of one DI (after the echoed DI). Raises RequestFailed."""

    @abstractmethod
    def address_query(self) -> tuple[bytes, Callable[[bytearray], tuple[Any, int]], Callable[[Any], bool]]:
        """The read-address request to AA…AA, the frame finder, and what a reply to it is."""

    @abstractmethod
    def address_found(self, frame: Any) -> str:
        """The address a reply to the query names (with the meter type, for CJ/T 188)."""

    async def read_address(self) -> str:
        """The address of the only meter on the line (wildcard read): with several, they all
        answer at once and nothing usable arrives. Raises RequestFailed."""
        request, find, accept = self.address_query()
        async with self._lock:
            frame = await self.transact(request, find, accept, "the address (AA…AA)")
            # On a real line two meters answering at once garble each other; a simulated or
            # buffered one may deliver both: either way the answer names no single meter.
            if await self.line.count_more(find, accept, self.bus.timeout):
                raise RequestFailed("more than one meter answered AA…AA — give the meter number "
                                    "(nameplate) instead", Quality.CORRUPT, answered=True)
        if frame.abnormal:
            raise RequestFailed("the meter refused read-address", Quality.EXCEPTION, answered=True)
        return self.address_found(frame)

    # -- the shared part ---------------------------------------------------------------------

    def frame_options(self, meter: MeterConfig) -> FrameOptions:
        return meter.frame or DEFAULT_FRAME

    def plan(self, meter: MeterConfig) -> list[DiRequest]:
        cached = self._plans.get(meter.name)
        if cached is None or cached[0] != id(meter.points):
            cached = (id(meter.points), plan_dis(meter.points))
            self._plans[meter.name] = cached
        return cached[1]

    def last_failures(self, meter: str) -> list[str]:
        return list(self.failures.get(meter, ()))

    async def close(self) -> None:
        async with self._lock:
            self.line.close()

    async def read(self, meter: MeterConfig) -> Sequence[Reading]:
        async with self._lock:
            self.failures[meter.name] = whys = []
            got: dict[str, Reading] = {}
            answered = False
            failed: list[RequestFailed] = []
            plan = self.plan(meter)
            order = self.frame_options(meter).value_order
            for request in plan:
                try:
                    values = await self.read_di(meter, request)
                except RequestFailed as failure:
                    whys.append(failure.what)
                    if not answered and not failure.answered:
                        # A silent meter costs one request's timeout per cycle, not one per DI.
                        raise MeterError(f"{meter.label}: {failure.what}", failure.quality) from None
                    answered = answered or failure.answered
                    failed.append(failure)
                    ts = now_ms()
                    for p in request.points:
                        got[p.name] = Reading(meter.name, p.name, ts, None, failure.quality)
                    log.debug("%s: %s", meter.label, failure.what)
                    continue
                answered = True
                ts = now_ms()
                for p in request.points:
                    got[p.name] = self._decoded(meter, p, values, order, ts, whys)
            if plan and len(failed) == len(plan) and all(f.quality == Quality.EXCEPTION for f in failed):
                # Refused throughout: the DIs or the address are wrong; the reason must reach
                # the meter's health record.
                distinct = list(dict.fromkeys(whys))
                raise MeterError(f"{meter.label}: {'; '.join(distinct[:3])}", Quality.EXCEPTION)
            ts = now_ms()
            return [got.get(p.name) or Reading(meter.name, p.name, ts, None, Quality.CORRUPT)
                    for p in meter.points]

    @staticmethod
    def _decoded(meter: MeterConfig, p: PointConfig, values: bytes, order: str, ts: int,
                 whys: list[str]) -> Reading:
        try:
            value = decode_point(values, p, order)
        except ShortReply as e:
            whys.append(f"{p.name} (DI {p.di}): {e}")
            return Reading(meter.name, p.name, ts, None, Quality.CORRUPT)
        except NotBcd as e:
            whys.append(f"{p.name} (DI {p.di}): no value ({e})")
            return Reading(meter.name, p.name, ts, None, Quality.INVALID)
        except ValueError as e:
            whys.append(f"{p.name} (DI {p.di}): {e}")
            return Reading(meter.name, p.name, ts, None, Quality.INVALID)
        return Reading(meter.name, p.name, ts, value)

    async def transact(self, request: bytes, find: Callable[[bytearray], tuple[F | None, int]],
                       accept: Callable[[F], bool], where: str, reply_bytes: int = 64) -> F:
        """Send `request` up to retries + 1 times; the accepted reply frame.

        Raises RequestFailed: TIMEOUT when nothing answered, CORRUPT when every answer was
        malformed (checksum, end byte), TIMEOUT with the port's reason when it cannot be used.
        """
        bad = None
        for _ in range(self.bus.retries + 1):
            self.requests_sent += 1
            try:
                return await self.line.exchange(request, find, accept, self.bus.timeout, reply_bytes)
            except NoReply:
                continue
            except BadFrame as e:
                bad = e
                continue
            except LineError as e:
                self.line.close()
                raise RequestFailed(str(e), Quality.TIMEOUT, answered=False) from None
        if bad is not None:
            raise RequestFailed(f"bad frame reading {where}: {bad.args[0]} — check for noise, "
                                "wiring and a second master on the line", Quality.CORRUPT, answered=True)
        raise RequestFailed(
            f"no reply after {self.bus.retries + 1} tries (timeout {self.bus.timeout:g} s) reading "
            f"{where} — check wiring, the meter address and baud rate/parity "
            f"(now {self.line.describe()})", Quality.TIMEOUT, answered=False)
