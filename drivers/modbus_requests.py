"""Executing a meter's planned Modbus requests on a connected client, one after another, and
what the meter's replies (or silences) mean for each point — including finding the points a
meter refuses inside a merged request (see RequestExecutor.read).

Decoding lives in drivers/reply_decoder.py; the bus (connection, lock, plans) in
drivers/modbus.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import MeterError, Quality, Reading
from drivers.line_guard import LineGuard
from drivers.planner import ReadRequest, split_request
from drivers.reply_decoder import ReplyDecoder

if TYPE_CHECKING:
    from pymodbus.client.base import ModbusBaseClient

    from drivers.model import BusConfig, MeterConfig

BUSY = 6  # Modbus exception "server device busy": retry later, not a fault
# "Illegal data address" / "illegal data value": the meter refuses part of what was asked.
REFUSED = (2, 3)
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


def now_ms() -> int:
    return int(time.time() * 1000)


FUNCTION_CODES = {"holding": 3, "input": 4}


def summary(whys: list[str], most: int = 3) -> str:
    """Distinct failure reasons on one line, the first few of them."""
    distinct = list(dict.fromkeys(whys))
    more = f"; and {len(distinct) - most} more" if len(distinct) > most else ""
    return "; ".join(distinct[:most]) + more


class FramingError(ModbusIOException):
    """A reply that does not frame as the answer to the request sent; `problem` says how.
    Raised by a strict framer (drivers/modbus_tcp.py), which has closed the connection."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _RequestFailed(Exception):
    """One request produced no usable registers. `answered`: the meter did reply."""

    def __init__(
        self, what: str, quality: Quality, answered: bool, busy: bool = False,
        link_down: bool = False, code: int | None = None,
    ) -> None:
        super().__init__(what)
        self.code = code  # the Modbus exception code, if the meter answered with one
        self.what = what
        self.quality = quality
        self.answered = answered
        self.busy = busy
        self.link_down = link_down


class RequestExecutor:
    """Executes planned read requests on a connected client and decodes the replies."""

    def __init__(self, bus: BusConfig, no_reply_hint: str, guard: LineGuard) -> None:
        self.bus = bus
        self.no_reply_hint = no_reply_hint
        self.guard = guard
        self.requests_sent = 0  # every request put on the wire (retries by pymodbus not counted)
        self.timed_out = False  # a request went unanswered since the driver last looked
        # Why requests failed in each meter's last read, one line each (without the meter label).
        self.failures: dict[str, list[str]] = {}
        # Meters whose last read found refused points (splitting refused requests as needed):
        # (requests that worked or failed otherwise, refused point -> why). The driver takes
        # each entry away.
        self.split: dict[str, tuple[list[ReadRequest], dict[str, str]]] = {}
        self._decoder = ReplyDecoder()

    async def read(
        self, client: ModbusBaseClient, meter: MeterConfig, plan: list[ReadRequest],
        refused: Mapping[str, str] | None = None,
    ) -> Sequence[Reading]:
        """One Reading per point of the meter, in the meter's point order.

        `refused`: points known to be refused (name -> why), not asked for; they are
        EXCEPTION gaps. A request of several points refused with exception 2 or 3 is split in
        two and each half asked at once, again and again, until the points the meter refuses
        are found; `split[meter.name]` then holds the requests that worked and the refused
        points, for the driver to read by from now on.

        Raises MeterError when the meter did not answer at all (TIMEOUT), answered every
        request with "busy" (busy=True), or refused every point (EXCEPTION, carrying the first
        refusals' reasons). A request that failed while others succeeded gives gaps for its
        own points only; `failures[meter.name]` says why.
        """
        got: dict[str, Reading] = {}
        answered = False
        failures: list[_RequestFailed] = []
        self.failures[meter.name] = whys = []
        refused = dict(refused or {})
        known = len(refused)
        if refused:
            ts = now_ms()
            for name in refused:
                got[name] = Reading(meter.name, name, ts, None, Quality.EXCEPTION)
            whys.extend(dict.fromkeys(refused.values()))
        split = False
        link_down: Quality | None = None  # the connection is gone: what the rest become
        kept: list[ReadRequest] = []  # what is worth asking again next poll
        todo = deque(plan)
        sent = 0
        while todo:
            request = todo.popleft()
            if link_down is not None:
                # Nothing more can get through this cycle; the driver reconnects next read.
                self._gaps(got, meter, request, link_down)
                kept.append(request)
                continue
            if sent and meter.pause_ms:
                await asyncio.sleep(meter.pause_ms / 1000)
            sent += 1
            try:
                registers, ts = await self._execute(client, meter, request)
            except _RequestFailed as failure:
                if failure.code in REFUSED and len(request.points) > 1:
                    # Which of its points does the meter refuse? Ask each half, now.
                    split = True
                    todo.extendleft(reversed(split_request(request)))
                    answered = True
                    continue
                if failure.code in REFUSED:
                    refused[request.points[0].name] = failure.what
                else:
                    kept.append(request)
                whys.append(failure.what)
                if not answered and not failure.answered:
                    # A silent meter costs one request's timeout per cycle, not one per request.
                    raise MeterError(f"{meter.label}: {failure.what}", failure.quality) from None
                answered = answered or failure.answered
                if failure.link_down:
                    link_down = failure.quality
                failures.append(failure)
                self._gaps(got, meter, request, failure.quality)
                continue
            answered = True
            kept.append(request)
            if len(plan) == 1 and not split and not refused and self._decoder.covers_in_order(request, meter):
                # The common case (one request covering the meter in point order): decoded
                # straight into the result, no per-point look-up.
                return self._decoder.decoded_meter(meter, request, registers, ts)
            for reading in self._decoder.decoded(meter, request, registers, ts):
                got[reading.point] = reading
        if split or len(refused) > known:
            self.split[meter.name] = (kept, {n: refused[n] for n in sorted(refused)})
        codes = [f.code for f in failures if f.code is not None]
        if not kept and refused:
            # Refused throughout: a configuration problem (register map, function, unit id).
            raise MeterError(f"{meter.label}: {summary(whys)}", Quality.EXCEPTION,
                             code=codes[0] if codes else None)
        if kept and len(failures) == sent and all(f.busy for f in failures):
            raise MeterError(
                f"{meter.label}: busy (exception 6) on every request — retried next cycle",
                Quality.EXCEPTION,
                busy=True,
                code=BUSY,
            )
        if sent and len(failures) == sent and all(f.quality == Quality.EXCEPTION for f in failures):
            # Refused throughout: a configuration problem (register map, function, unit id);
            # the reason must reach the meter's health record.
            raise MeterError(f"{meter.label}: {summary(whys)}", Quality.EXCEPTION,
                             code=codes[0] if codes else None)
        ts = now_ms()
        return [
            got.get(p.name) or Reading(meter.name, p.name, ts, None, Quality.CORRUPT)
            for p in meter.points
        ]

    async def _execute(
        self, client: ModbusBaseClient, meter: MeterConfig, request: ReadRequest
    ) -> tuple[list[int], int]:
        call = (
            client.read_holding_registers
            if request.function == "holding"
            else client.read_input_registers
        )
        where = request.where
        if meter.unit in self.guard._until:  # nothing to wait out or flush otherwise
            await self.guard.clear(client, meter.unit)
        started = time.monotonic()
        self.requests_sent += 1
        try:
            try:
                # Awaited here, not in a helper coroutine: each level of coroutines is walked on
                # every resume, and this runs for every request on every bus.
                reply: Any = await call(request.start, count=request.count, device_id=meter.unit)
            except (ModbusException, OSError) as e:
                raise self._failure(e, where) from None
            if getattr(reply, "retries", 0):
                # pymodbus resent the request after a silence (each copy one timeout after the
                # last): this reply may answer an earlier copy — same request, same data — and
                # the answer to the last copy may still follow.
                self.guard.unsettled(meter.unit, started + reply.retries * self.bus.timeout)
            return self._check(request, where, reply)
        except _RequestFailed as failure:
            if failure.quality != Quality.EXCEPTION:
                # No reply (the last copy went out one timeout ago), or a frame that did not
                # fit (so the real reply may follow it): either may still arrive.
                now = time.monotonic()
                self.guard.unsettled(
                    meter.unit, now - self.bus.timeout if failure.quality == Quality.TIMEOUT else now
                )
            raise

    def _failure(self, e: ModbusException | OSError, where: str) -> _RequestFailed:
        """What a pymodbus exception raised by a request means for its points."""
        if isinstance(e, FramingError):
            return _RequestFailed(
                f"reply to {where} broke Modbus TCP framing ({e.problem}) — connection closed "
                "and its buffer discarded; check for a faulty gateway or a second client",
                Quality.CORRUPT, answered=True, link_down=True,
            )
        if isinstance(e, ConnectionException):
            return _RequestFailed(
                f"connection lost reading {where} — {self.no_reply_hint}",
                Quality.TIMEOUT, answered=False, link_down=True,
            )
        if isinstance(e, ModbusIOException):
            self.timed_out = "No response" in str(e) or self.timed_out
            if "but received" in str(e):  # a reply from another unit or transaction
                return _RequestFailed(
                    f"mismatched reply to {where} — check for duplicate unit ids on the line",
                    Quality.CORRUPT, answered=True,
                )
            return _RequestFailed(
                f"no reply after {self.bus.retries + 1} tries (timeout {self.bus.timeout:g} s) "
                f"— {self.no_reply_hint}",
                Quality.TIMEOUT, answered=False,
            )
        return _RequestFailed(
            f"failed reading {where}: {e} — {self.no_reply_hint}",
            Quality.TIMEOUT, answered=False, link_down=True,
        )

    def _check(self, request: ReadRequest, where: str, reply: Any) -> tuple[list[int], int]:
        """The reply's registers, if the reply is an answer to this request."""
        ts = now_ms()
        function = FUNCTION_CODES[request.function]
        if (getattr(reply, "function_code", function) & 0x7F) != function:
            # RTU has no transaction id: a frame answering another function is not ours.
            raise _RequestFailed(
                f"reply with function {reply.function_code & 0x7F} to {where} (function "
                f"{function}) — check for a second master on the line",
                Quality.CORRUPT, answered=True,
            )
        if reply.isError():
            code = getattr(reply, "exception_code", None)
            name = EXCEPTION_NAMES.get(code, "unknown exception") if code is not None else "error"
            hint = (
                "retried next cycle"
                if code == BUSY
                else "check the register map (profile) and the function (holding/input)"
            )
            raise _RequestFailed(
                f"exception {code} ({name}) reading {where} — {hint}",
                Quality.EXCEPTION, answered=True, busy=code == BUSY, code=code,
            )
        registers: list[int] = getattr(reply, "registers", None) or []
        if len(registers) != request.count:
            # Too many is as wrong as too few: the frame answers some other request.
            raise _RequestFailed(
                f"reply to {where} has {len(registers)} registers, not {request.count} "
                "— check for noise or a second master on the line",
                Quality.CORRUPT, answered=True,
            )
        return registers, ts

    @staticmethod
    def _gaps(
        got: dict[str, Reading], meter: MeterConfig, request: ReadRequest, quality: Quality
    ) -> None:
        ts = now_ms()
        for point in request.points:
            got[point.name] = Reading(meter.name, point.name, ts, None, quality)
