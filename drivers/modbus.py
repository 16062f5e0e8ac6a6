"""What Modbus TCP and RTU share: planned requests, strictly one after another, and what the
meter's replies (or silences) mean for each point.

`RequestExecutor` runs a meter's plan on a connected pymodbus async client and turns replies
into Readings (decoding lives in drivers/reply_decoder.py). `ModbusDriver` owns one bus: it
connects lazily, reconnects on the next read after a loss, and serialises every request on
the bus with one lock. The TCP and RTU modules only say how to build the client and how to
phrase hints. `LineGuard` (drivers/line_guard.py) keeps a late reply from being taken for
the answer to a later request (RTU frames carry no transaction id, and some TCP servers stamp
a late reply with the wrong one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import MeterError, Quality, Reading
from drivers.line_guard import LineGuard, discard_input
from drivers.planner import ReadRequest, plan_meter
from drivers.reply_decoder import ReplyDecoder

if TYPE_CHECKING:
    from pymodbus.client.base import ModbusBaseClient

    from drivers.model import BusConfig, MeterConfig

log = logging.getLogger("drivers.modbus")

BUSY = 6  # Modbus exception "server device busy": retry later, not a fault
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


def meter_label(meter: MeterConfig) -> str:
    return f'meter "{meter.name}" (bus {meter.bus}, unit {meter.unit})'


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
        self, what: str, quality: Quality, answered: bool, busy: bool = False, link_down: bool = False
    ) -> None:
        super().__init__(what)
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
        self._decoder = ReplyDecoder()

    async def read(
        self, client: ModbusBaseClient, meter: MeterConfig, plan: list[ReadRequest]
    ) -> Sequence[Reading]:
        """One Reading per point of the meter, in the meter's point order.

        Raises MeterError when the meter did not answer at all (TIMEOUT), answered every
        request with "busy" (busy=True), or refused every request with another exception
        (EXCEPTION, carrying the first refusals' reasons). A request that failed while others
        succeeded gives gaps for its own points only; `failures[meter.name]` says why.
        """
        got: dict[str, Reading] = {}
        answered = False
        failures: list[_RequestFailed] = []
        self.failures[meter.name] = whys = []
        link_down: Quality | None = None  # the connection is gone: what the rest become
        for i, request in enumerate(plan):
            if link_down is not None:
                # Nothing more can get through this cycle; the driver reconnects next read.
                self._gaps(got, meter, request, link_down)
                continue
            if i and meter.pause_ms:
                await asyncio.sleep(meter.pause_ms / 1000)
            try:
                registers, ts = await self._execute(client, meter, request)
            except _RequestFailed as failure:
                whys.append(failure.what)
                if not answered and not failure.answered:
                    # A silent meter costs one request's timeout per cycle, not one per request.
                    raise MeterError(f"{meter_label(meter)}: {failure.what}", failure.quality) from None
                answered = answered or failure.answered
                if failure.link_down:
                    link_down = failure.quality
                failures.append(failure)
                self._gaps(got, meter, request, failure.quality)
                # Busy is routine (the meter is retried next cycle), not worth a warning.
                log.log(logging.DEBUG if failure.busy else logging.WARNING,
                        "%s: %s; its %d points are gaps", meter_label(meter), failure.what,
                        len(request.points))
                continue
            answered = True
            if len(plan) == 1 and self._decoder.covers_in_order(request, meter):
                # The common case (one request covering the meter in point order): decoded
                # straight into the result, no per-point look-up.
                return self._decoder.decoded_meter(meter, request, registers, ts)
            for reading in self._decoder.decoded(meter, request, registers, ts):
                got[reading.point] = reading
        if plan and len(failures) == len(plan):
            if all(f.busy for f in failures):
                raise MeterError(
                    f"{meter_label(meter)}: busy (exception 6) on every request — retried next cycle",
                    Quality.EXCEPTION,
                    busy=True,
                )
            if all(f.quality == Quality.EXCEPTION for f in failures):
                # Refused throughout: a configuration problem (register map, function, unit id);
                # the reason must reach the meter's health record, not only this log.
                raise MeterError(f"{meter_label(meter)}: {summary(whys)}", Quality.EXCEPTION)
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
                Quality.EXCEPTION, answered=True, busy=code == BUSY,
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


class ModbusDriver(ABC):
    """One Modbus bus. Requests never overlap; the connection opens on the first read."""

    # Over TCP a silence may be a half-open connection that will never answer again; a fresh
    # connection on the next read is cheap. A serial port stays open.
    reconnect_after_silence = False

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._lock = asyncio.Lock()
        self._client: ModbusBaseClient | None = None
        self._plans: dict[str, tuple[tuple[Any, ...], list[ReadRequest]]] = {}
        # The guard outlives clients: a converter forwards a late reply to the next connection.
        self.guard = LineGuard(bus.timeout)
        self._executor = RequestExecutor(bus, self.no_reply_hint(), self.guard)
        self.connects = 0  # successful (re)connections, for status and tests

    @property
    def requests_sent(self) -> int:
        return self._executor.requests_sent

    def last_failures(self, meter: str) -> list[str]:
        """Why requests failed in the meter's last read, one line each; empty if none did."""
        return list(self._executor.failures.get(meter, ()))

    @abstractmethod
    def _new_client(self) -> ModbusBaseClient:
        """A pymodbus async client for this bus, not yet connected."""

    @abstractmethod
    def endpoint(self) -> str:
        """Where the bus is, for messages: `10.0.0.5:502` or `/dev/ttyS1`."""

    @abstractmethod
    def no_reply_hint(self) -> str:
        """What to check when a meter stays silent."""

    @abstractmethod
    def connect_hint(self) -> str:
        """What to check when the bus cannot be opened."""

    def plan(self, meter: MeterConfig) -> list[ReadRequest]:
        """The meter's read plan, computed once and reused while its points are unchanged."""
        key = (id(meter.points), len(meter.points), meter.max_registers, meter.max_gap)
        cached = self._plans.get(meter.name)
        if cached is None or cached[0] != key:
            cached = (key, plan_meter(meter))
            self._plans[meter.name] = cached
        return cached[1]

    async def read(self, meter: MeterConfig) -> Sequence[Reading]:
        async with self._lock:
            # A failed connect sends no request: no request reasons from an older read remain.
            self._executor.failures.pop(meter.name, None)
            client = await self._connected(meter)
            self._executor.timed_out = False
            try:
                return await self._executor.read(client, meter, self.plan(meter))
            finally:
                if not client.connected or (
                    self._executor.timed_out and self.reconnect_after_silence
                ):
                    self._drop_client()

    async def close(self) -> None:
        async with self._lock:
            self._drop_client()

    async def _connected(self, meter: MeterConfig) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop_client()
        client = self._new_client()
        try:
            ok = await client.connect()
        except (ModbusException, OSError) as e:
            log.debug("bus %s: connect to %s failed: %s", self.bus.name, self.endpoint(), e)
            ok = False
        if not ok:
            client.close()
            raise MeterError(
                f"{meter_label(meter)}: cannot connect to {self.endpoint()} — {self.connect_hint()}",
                Quality.TIMEOUT,
            )
        # Whatever reached a serial port before we owned it answers nothing we will ask.
        discard_input(client)
        self._client = client
        self.connects += 1
        log.info("bus %s: connected to %s", self.bus.name, self.endpoint())
        if meter.connect_pause_ms:
            # Some meters drop the first request that arrives right after a connect.
            await asyncio.sleep(meter.connect_pause_ms / 1000)
        return client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def client_options(self) -> dict[str, Any]:
        """Options every client of this bus gets: the bus's timeout and retries, and no
        background reconnect (we reconnect on the next read, under the bus lock)."""
        return {
            "timeout": self.bus.timeout,
            "retries": self.bus.retries,
            "reconnect_delay": 0,
            "name": self.bus.name,
        }
