"""What Modbus TCP and RTU share: one bus, its connection, and each meter's read plan.

`RequestExecutor` (drivers/modbus_requests.py) runs a meter's plan on a connected pymodbus
async client and turns replies into Readings. `ModbusDriver` owns one bus: it
connects lazily, reconnects on the next read after a loss, and serialises every request on
the bus with one lock. The TCP and RTU modules only say how to build the client and how to
phrase hints. `LineGuard` (drivers/line_guard.py) keeps a late reply from being taken for
the answer to a later request (RTU frames carry no transaction id, and some TCP servers stamp
a late reply with the wrong one). A meter that refuses some of its points is read by a
`Refinement` of its plan until the plan is tried again at the offline cooldown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pymodbus.exceptions import ModbusException

from drivers.base import BusFault, Reading
from drivers.line_guard import LineGuard, discard_input
from drivers.modbus_requests import EXCEPTION_NAMES, RequestExecutor
from drivers.planner import ReadRequest, describe_plan, plan_meter

if TYPE_CHECKING:
    from pymodbus.client.base import ModbusBaseClient

    from drivers.model import BusConfig, MeterConfig

log = logging.getLogger("drivers.modbus")

__all__ = ["EXCEPTION_NAMES", "ModbusDriver", "Refinement"]


class Refinement:
    """How a meter that refuses some of its points is read: the requests that work, and the
    refused points with why; until `retry_at` (driver clock), when its plan is tried again."""

    __slots__ = ("plan", "refused", "retry_at")

    def __init__(self, plan: list[ReadRequest], refused: dict[str, str], retry_at: float) -> None:
        self.plan = plan
        self.refused = refused
        self.retry_at = retry_at

    def describe(self) -> list[str]:
        return [*describe_plan(self.plan), *(f"refused {name}: {why}" for name, why in self.refused.items())]


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
        # Meters that refuse some of their points: what is read instead of the planned
        # requests, until the configured plan is tried again (bus.offline_cooldown later).
        self._refined: dict[str, Refinement] = {}
        self.clock = time.monotonic  # for the refinements' retry times (tests move it)
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

    def refused_setting_hint(self, e: Exception) -> str:
        """One line for a port that refuses the bus's serial settings (termios.error)."""
        b = self.bus
        return (
            f"{b.device} refuses the serial setting {b.baud} {b.data_bits}{b.parity}{b.stop_bits} "
            f"({e.args[-1] if e.args else e}) — the adapter or its driver cannot do parity "
            f"{b.parity} or {b.stop_bits} stop bit(s) at {b.baud} baud; try parity N (and "
            "stop_bits = 2 if the meters expect 11-bit characters) or another adapter"
        )

    def plan(self, meter: MeterConfig) -> list[ReadRequest]:
        """The meter's read plan, computed once and reused while its points are unchanged."""
        key = (id(meter.points), len(meter.points), meter.max_registers, meter.max_gap)
        cached = self._plans.get(meter.name)
        if cached is None or cached[0] != key:
            cached = (key, plan_meter(meter))
            self._plans[meter.name] = cached
        return cached[1]

    def read_plan(self, meter: str) -> list[str] | None:
        """How the meter is read when that differs from its configured plan (some of its points
        are refused): the requests in check-config's form, then each refused point and why."""
        r = self._refined.get(meter)
        return None if r is None else r.describe()

    async def read(self, meter: MeterConfig) -> Sequence[Reading]:
        async with self._lock:
            # A failed connect sends no request: no request reasons from an older read remain.
            self._executor.failures.pop(meter.name, None)
            client = await self._connected(meter)
            self._executor.timed_out = False
            plan, refused = self.plan(meter), None
            refined = self._refined.get(meter.name)
            if refined is not None and self.clock() < refined.retry_at:
                plan, refused = refined.plan, refined.refused
            try:
                return await self._executor.read(client, meter, plan, refused)
            finally:
                found = self._executor.split.pop(meter.name, None)
                if found is not None:
                    self._refined[meter.name] = Refinement(
                        *found, self.clock() + self.bus.offline_cooldown)
                elif refined is not None and refused is None and not self._executor.failures.get(meter.name):
                    # The configured plan was read again without a refusal: the meter was
                    # reconfigured (or replaced); read it as planned from now on.
                    del self._refined[meter.name]
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
        except Exception as e:
            # termios.error (not an OSError): the port exists but refuses a line setting.
            client.close()
            if type(e).__name__ != "error" or type(e).__module__ != "termios":
                raise
            raise BusFault(self.bus.name, self.refused_setting_hint(e)) from None
        if not ok:
            client.close()
            raise BusFault(self.bus.name, f"cannot connect to {self.endpoint()} — {self.connect_hint()}")
        # Whatever reached a serial port before we owned it answers nothing we will ask.
        discard_input(client)
        self._client = client
        self.connects += 1
        # A TCP bus reconnects after every silence: only its first connection is news.
        log.log(logging.INFO if self.connects == 1 else logging.DEBUG,
                "bus %s: connected to %s", self.bus.name, self.endpoint())
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
