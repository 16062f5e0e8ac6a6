"""BusPoller over the real Modbus TCP driver and a real pymodbus server on a loopback port.

The poller's clock is a hand-driven fake so offline cooldowns pass instantly; the driver,
the server and their timeouts are real. A stopped server refuses connections at once, so a
"dead" meter costs these tests no timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.runtime.poller import BusPoller
from buffer.store import MeterStatus
from drivers.base import Quality, Reading
from drivers.codec import encode
from drivers.modbus_tcp import ModbusTcpDriver
from drivers.model import BusConfig, MeterConfig, PointConfig
from hil.broker import free_port

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs every refused request

POINTS = [
    PointConfig(name="energy", register=0, type="u32", scale=0.01, kind="counter"),
    PointConfig(name="voltage", register=20, type="u16", scale=0.1),
]
REGISTERS = [*encode(1_234_567, "u32", "ABCD"), *[0] * 18, 2301]  # 12345.67 kWh, 230.1 V


class Clock:
    """The poller's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Refusal:
    """A SimDevice action: None answers normally, an exception code is replied instead."""

    def __init__(self, code: ExcCodes | None = None) -> None:
        self.code = code

    async def act(self, *_: Any) -> ExcCodes | None:
        return self.code


class Server:
    """A pymodbus TCP server for one meter that can be stopped and started on its port."""

    def __init__(self, unit: int, registers: list[int], refusal: Refusal) -> None:
        self.port = free_port()
        self.device = SimDevice(unit, simdata=[
            SimData(0, values=registers, datatype=DataType.REGISTERS)], action=refusal.act)
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        self._server = ModbusTcpServer([self.device], address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


class CountingDriver(ModbusTcpDriver):
    """The real TCP driver, counting the reads the poller asks of it (probes included)."""

    def __init__(self, bus: BusConfig) -> None:
        super().__init__(bus)
        self.reads = 0

    async def read(self, meter: MeterConfig) -> Sequence[Reading]:
        self.reads += 1
        return await super().read(meter)


class Sink:
    def __init__(self) -> None:
        self.statuses: list[MeterStatus] = []

    async def __call__(self, readings: list[Sequence[Reading]], statuses: list[MeterStatus]) -> None:
        self.statuses.extend(statuses)


def make_meter(points: list[PointConfig], unit: int = 3) -> MeterConfig:
    m = MeterConfig(name="m", bus="b", unit=unit)
    m.points = points
    m.max_registers, m.max_gap, m.pause_ms, m.connect_pause_ms = 125, 10, 0, 0
    return m


Body = Callable[[BusPoller, CountingDriver, Server, Clock, Sink], Awaitable[None]]


def run(body: Body, *, points: list[PointConfig] | None = None,
        registers: list[int] | None = None, refusal: Refusal | None = None,
        offline_after: int = 3, cooldown: float = 60.0) -> None:
    async def main() -> None:
        server = Server(3, REGISTERS if registers is None else registers, refusal or Refusal())
        await server.start()
        bus = BusConfig(name="b", kind="modbus-tcp", host="127.0.0.1", port=server.port,
                        timeout=0.3, retries=0, offline_after=offline_after,
                        offline_cooldown=cooldown)
        driver = CountingDriver(bus)
        clock, sink = Clock(), Sink()
        poller = BusPoller(bus, [make_meter(points or POINTS)], driver, sink, clock=clock)
        try:
            await asyncio.wait_for(body(poller, driver, server, clock, sink), 20)
        finally:
            await driver.close()
            await server.stop()

    asyncio.run(main())


async def cycle(poller: BusPoller) -> list[Reading]:
    """One poll cycle's samples, every meter's in order, as one list."""
    return [r for meter in await poller.poll_once() for r in meter]


def qualities(rows: list[Reading]) -> set[Quality]:
    return {r.quality for r in rows}


def test_offline_after_n_failures_probe_once_per_cooldown_and_back_online() -> None:
    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        h = poller.health["m"]
        rows = await cycle(poller)
        assert [r.value for r in rows] == pytest.approx([12345.67, 230.1])
        assert h.online and h.last_good_ms is not None
        good_at = h.last_good_ms

        await server.stop()
        for n in (1, 2, 3):
            clock.advance(10)
            assert qualities(await cycle(poller)) == {Quality.TIMEOUT}
            assert h.consecutive_failures == n
            assert h.online == (n < 3)  # offline_after = 3
        assert driver.reads == 4
        assert h.last_error is not None
        assert h.last_error.startswith(f'meter "m" (bus b, unit 3): cannot connect to '
                                       f"127.0.0.1:{server.port}")
        assert sink.statuses[-1].online is False and sink.statuses[-1].consecutive_failures == 3

        # Within the cooldown: OFFLINE gaps for every point, the driver is not asked at all,
        # and the sink hears nothing new (the health did not change).
        heard = len(sink.statuses)
        for _ in range(5):
            clock.advance(10)
            rows = await cycle(poller)
            assert [r.quality for r in rows] == [Quality.OFFLINE] * len(POINTS)
        assert driver.reads == 4 and len(sink.statuses) == heard

        # One probe once the cooldown is over; still dead, so another full cooldown follows.
        clock.advance(10)  # 60 s since going offline
        assert qualities(await cycle(poller)) == {Quality.TIMEOUT}
        assert driver.reads == 5 and not h.online
        for _ in range(5):
            clock.advance(10)
            assert qualities(await cycle(poller)) == {Quality.OFFLINE}
        assert driver.reads == 5

        # The meter is back: the next probe succeeds and it is online again at once.
        await server.start()
        clock.advance(10)
        rows = await cycle(poller)
        assert [r.quality for r in rows] == [Quality.GOOD, Quality.GOOD]
        assert [r.value for r in rows] == pytest.approx([12345.67, 230.1])
        assert driver.reads == 6
        assert h.online and h.consecutive_failures == 0
        assert h.last_good_ms is not None and good_at is not None and h.last_good_ms > good_at
        assert h.errors_total == 4  # three failed cycles and one failed probe
        assert sink.statuses[-1].online is True
        clock.advance(10)
        await cycle(poller)
        assert driver.reads == 7  # polled every cycle again

    run(body)


def test_last_error_carries_the_drivers_reason_for_a_refused_meter() -> None:
    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        h = poller.health["m"]
        for n in (1, 2):
            clock.advance(10)
            assert qualities(await cycle(poller)) == {Quality.EXCEPTION}
            assert h.consecutive_failures == n
        # A refusal on every request is a configuration fault: it counts towards offline.
        assert not h.online
        # Both requests of its plan (registers 0..1 and 20) were refused; both reasons kept.
        hint = "check the register map (profile) and the function (holding/input)"
        assert h.last_error == (
            f'meter "m" (bus b, unit 3): exception 2 (illegal data address) reading holding '
            f"0..1 — {hint}; exception 2 (illegal data address) reading holding 20..20 — {hint}")
        assert sink.statuses[-1].last_error == h.last_error

    run(body, refusal=Refusal(ExcCodes.ILLEGAL_ADDRESS), offline_after=2)


def test_last_error_names_the_failed_points_and_the_drivers_reason() -> None:
    far = PointConfig(name="power_factor", register=500, type="s16", scale=0.001)

    async def partial(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                      sink: Sink) -> None:
        h = poller.health["m"]
        rows = {r.point: r.quality for r in await cycle(poller)}
        assert rows == {"energy": Quality.GOOD, "voltage": Quality.GOOD,
                        "power_factor": Quality.EXCEPTION}
        assert h.online and h.consecutive_failures == 0 and h.errors_total == 1
        assert h.last_error == (
            'meter "m" (bus b, unit 3): 1 point(s) failed: power_factor — exception 2 (illegal '
            "data address) reading holding 500..500 — check the register map (profile) and the "
            "function (holding/input)")

    run(partial, points=[*POINTS, far])

    # Every point fails, for two reasons: one request refused, the other's value is NaN.
    nan = PointConfig(name="current", register=0, type="f32")
    nan_registers = [*encode(math.nan, "f32", "ABCD"), *[0] * 19]

    async def all_failed(poller: BusPoller, driver: CountingDriver, server: Server,
                         clock: Clock, sink: Sink) -> None:
        h = poller.health["m"]
        rows = {r.point: r.quality for r in await cycle(poller)}
        assert rows == {"current": Quality.INVALID, "power_factor": Quality.EXCEPTION}
        assert h.consecutive_failures == 1
        assert h.last_error == (
            'meter "m" (bus b, unit 3): every point failed — exception 2 (illegal data address) '
            "reading holding 500..500 — check the register map (profile) and the function "
            "(holding/input); not a usable number (NaN or infinite)")

    run(all_failed, points=[nan, far], registers=nan_registers)


def test_busy_never_takes_a_meter_offline() -> None:
    refusal = Refusal(ExcCodes.DEVICE_BUSY)

    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        h = poller.health["m"]
        for _ in range(6):  # three times offline_after
            clock.advance(10)
            assert qualities(await cycle(poller)) == {Quality.EXCEPTION}
            assert h.online and h.consecutive_failures == 0
        assert driver.reads == 6  # polled every cycle, never put in a cooldown
        assert h.errors_total == 6
        assert h.last_error is not None and "busy (exception 6)" in h.last_error
        refusal.code = None
        clock.advance(10)
        assert qualities(await cycle(poller)) == {Quality.GOOD}

    run(body, refusal=refusal, offline_after=2)


def test_restore_keeps_counts_last_error_and_the_offline_state() -> None:
    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        poller.restore([
            MeterStatus(meter="m", bus="b", online=False, last_good_ms=1_700_000_000_000,
                        last_error_ms=1_700_000_100_000, last_error="before the restart",
                        errors_total=41, consecutive_failures=7),
            MeterStatus(meter="gone", bus="b", online=True, last_good_ms=None,
                        last_error_ms=None, last_error=None, errors_total=3,
                        consecutive_failures=0),
        ])
        h = poller.health["m"]
        assert (h.errors_total, h.last_good_ms, h.last_error_ms, h.last_error) == (
            41, 1_700_000_000_000, 1_700_000_100_000, "before the restart")
        # Still offline after the restart (the heartbeat must not say "online"), but probed in
        # the first cycle rather than a cooldown later.
        assert not h.online and h.consecutive_failures == 7
        assert "gone" not in poller.health
        await server.stop()
        assert qualities(await cycle(poller)) == {Quality.TIMEOUT}
        assert driver.reads == 1 and h.errors_total == 42 and not h.online
        clock.advance(10)  # within the cooldown: not asked
        assert qualities(await cycle(poller)) == {Quality.OFFLINE}
        assert driver.reads == 1
        await server.start()
        clock.advance(60)
        assert qualities(await cycle(poller)) == {Quality.GOOD}
        assert h.online and h.consecutive_failures == 0
        assert sink.statuses[-1].online is True

    run(body)


class Held(Refusal):
    """Answers normally, but only once `release` is set: a cycle that outlasts its tick."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def act(self, *_: Any) -> ExcCodes | None:
        await self.release.wait()
        return None


def test_a_tick_while_the_cycle_runs_is_skipped_counted_and_in_the_snapshot() -> None:
    held = Held()

    async def body(poller: BusPoller, driver: CountingDriver, server: Server, clock: Clock,
                   sink: Sink) -> None:
        first = poller.start_cycle()
        assert first is not None and first.get_name() == "b"
        await asyncio.sleep(0.05)  # its request is on the wire, the reply held back
        assert poller.start_cycle() is None and poller.start_cycle() is None
        assert driver.reads == 1  # a skipped tick never starts a second cycle on the line
        held.release.set()
        await first
        poller.missed_tick()  # the scheduler could not even start a tick
        snap = poller.snapshot()
        assert (snap.bus, snap.cycles, snap.overruns) == ("b", 1, 3)
        assert [(m.meter, m.online, m.errors_total) for m in snap.meters] == [("m", True, 0)]
        second = poller.start_cycle()
        assert second is not None and second is not first
        await second
        assert poller.snapshot().cycles == 2 and driver.reads == 2

    run(body, refusal=held)
