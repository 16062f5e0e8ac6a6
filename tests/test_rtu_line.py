"""RS-485 for real: the RTU driver and the bus poller on a serial line with several meters.

Each line is agent pty ⇄ SerialRelay ⇄ pty with one pymodbus ModbusSerialServer playing all
the meters on it (tests/rtu_sim.py); the relay injects silence, bad CRCs, truncated and late
replies per unit id and adds the 9600-baud frame time a pty does not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import termios
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from pymodbus.constants import ExcCodes

from agent.runtime.poller import BusPoller
from drivers.base import MeterError, Quality, Reading
from drivers.modbus_rtu import ModbusRtuDriver
from drivers.model import BusConfig, PointConfig
from tests.rtu_sim import Switch, device_for, inline_meter, profile_meter, rtu_bus, rtu_line

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it prints every bad frame

POINTS = [
    PointConfig(name="import_active_energy", register=0, type="u32", scale=0.01, kind="counter",
                unit="kWh"),
    PointConfig(name="voltage_a", register=2, type="u16", scale=0.1, unit="V"),
    PointConfig(name="current_a", register=3, type="f32", scale=0.001, unit="A"),
    PointConfig(name="frequency", register=5, type="u16", scale=0.01, unit="Hz"),
]


@dataclass
class Cycle:
    started: float
    seconds: float
    readings: dict[str, list[Reading]]
    statuses: list = field(default_factory=list)  # type: ignore[type-arg]


class Recorder:
    """The poller's sink: keeps what each cycle handed on."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[Reading], list]] = []  # type: ignore[type-arg]

    async def __call__(self, polls: list[Sequence[Reading]], statuses: list) -> None:  # type: ignore[type-arg]
        self.batches.append(([r for poll in polls for r in poll], statuses))


def by_meter(readings: Sequence[Reading]) -> dict[str, list[Reading]]:
    out: dict[str, list[Reading]] = {}
    for r in readings:
        out.setdefault(r.meter, []).append(r)
    return out


def qualities(rows: Sequence[Reading]) -> set[Quality]:
    return {r.quality for r in rows}


async def run_cycles(
    poller: BusPoller, sink: Recorder, count: int, interval: float, between: dict | None = None  # type: ignore[type-arg]
) -> list[Cycle]:
    """Poll `count` times on an `interval` grid, calling between[i]() before cycle i."""
    cycles: list[Cycle] = []
    t0 = time.monotonic()
    for i in range(count):
        if between and i in between:
            between[i]()
        await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
        start = time.monotonic()
        await poller.poll_once()
        readings, statuses = sink.batches[-1]
        cycles.append(Cycle(start, time.monotonic() - start, by_meter(readings), statuses))
    return cycles


def test_silent_meter_goes_offline_and_costs_the_live_ones_nothing() -> None:
    interval, cooldown = 0.5, 1.5
    meters = [inline_meter(f"m{u}", u, POINTS) for u in (1, 2, 3)]

    async def main() -> tuple[list[Cycle], list[float], BusPoller, float]:
        async with rtu_line([device_for(u, POINTS) for u in (1, 2, 3)], baud=9600) as line:
            bus = rtu_bus(line.agent_port, timeout=0.1, retries=0, offline_after=2,
                          offline_cooldown=cooldown)
            driver = ModbusRtuDriver(bus)
            sink = Recorder()
            poller = BusPoller(bus, meters, driver, sink)
            line.relay.set_fault(3, "silent")
            t0 = time.monotonic()
            try:
                cycles = await run_cycles(poller, sink, 12, interval,
                                          {8: lambda: line.relay.set_fault(3, "pass")})
            finally:
                await driver.close()
            probes = [r.at - t0 for r in line.relay.requests_for(3)]
            return cycles, probes, poller, t0

    cycles, probes, poller, t0 = asyncio.run(main())

    for i, c in enumerate(cycles):
        assert c.seconds < interval, f"cycle {i} took {c.seconds:.3f} s"
        for name in ("m1", "m2"):
            assert qualities(c.readings[name]) == {Quality.GOOD}, (i, name)
    m3 = [qualities(c.readings["m3"]) for c in cycles]
    # Cycles 0 and 1 time out, then the meter is offline: its skipped polls are OFFLINE gaps.
    assert m3[0] == m3[1] == {Quality.TIMEOUT}
    offline = [i for i, q in enumerate(m3) if q == {Quality.OFFLINE}]
    assert offline and offline[0] == 2
    for i in offline:
        # Skipping it costs nothing: the cycle is the two live meters only.
        assert cycles[i].seconds < 0.1, f"offline cycle {i} took {cycles[i].seconds:.3f} s"
        assert len(cycles[i].readings["m3"]) == len(POINTS)
    # Probed again no more than once per cooldown while silent; each probe is one request.
    # Requests 0 and 1 are the two failed cycles; every later one while silent is a probe.
    silent_until = cycles[8].started - t0
    silent = [t for t in probes if t < silent_until]
    assert len(silent) >= 3, "the offline meter was never probed again"
    assert len(silent) <= 2 + int((silent_until - silent[1]) / cooldown)
    for a, b in itertools.pairwise(silent[1:]):
        assert b - a >= cooldown, f"probes at {a:.2f} s and {b:.2f} s closer than the cooldown"
    # Back once the relay passes it again: the next probe succeeds and it stays online.
    assert m3[-1] == {Quality.GOOD}
    assert poller.health["m3"].online and poller.health["m3"].consecutive_failures == 0
    assert all(poller.health[m].errors_total == 0 for m in ("m1", "m2"))
    went_offline = [s for c in cycles for s in c.statuses if s.meter == "m3" and not s.online]
    assert went_offline, "the sink never heard that m3 went offline"


def test_faulty_replies_are_errors_of_their_meter_only() -> None:
    far = PointConfig(name="power_factor", register=500, type="s16", scale=0.001)
    meters = [
        inline_meter("ok", 1, POINTS),
        inline_meter("refuses", 2, POINTS),  # answers every read with exception 2
        inline_meter("busy", 3, POINTS),  # exception 6 for a while, then fine
        inline_meter("noisy", 4, POINTS),  # bad CRC, then truncated replies, then fine
        inline_meter("partial", 5, [*POINTS, far]),  # register 500 does not exist on the meter
    ]
    refuse, busy = Switch(ExcCodes.ILLEGAL_ADDRESS), Switch(ExcCodes.DEVICE_BUSY)
    devices = [
        device_for(1, POINTS), device_for(2, POINTS, action=refuse),
        device_for(3, POINTS, action=busy), device_for(4, POINTS), device_for(5, POINTS),
    ]

    async def main() -> tuple[list[Cycle], BusPoller]:
        async with rtu_line(devices) as line:
            bus = rtu_bus(line.agent_port, timeout=0.1, retries=0, offline_after=2,
                          offline_cooldown=60)

            def noisy(fault: str) -> None:
                line.relay.set_fault(4, fault)

            def calm() -> None:
                busy.code = None
                noisy("pass")

            driver = ModbusRtuDriver(bus)
            sink = Recorder()
            poller = BusPoller(bus, meters, driver, sink)
            noisy("corrupt")
            try:
                cycles = await run_cycles(poller, sink, 5, 0.0, {1: lambda: noisy("truncate"),
                                                                 4: calm})
            finally:
                await driver.close()
            return cycles, poller

    cycles, poller = asyncio.run(main())
    h = poller.health
    assert poller.cycles == 5  # the bus task survived every reply
    for c in cycles:
        assert qualities(c.readings["ok"]) == {Quality.GOOD}
        assert qualities(c.readings["refuses"]) <= {Quality.EXCEPTION, Quality.OFFLINE}
    assert h["ok"].errors_total == 0 and h["ok"].last_error is None

    # Exception 2 on every read: a misconfigured meter, errors counted, offline after 2 cycles.
    assert qualities(cycles[0].readings["refuses"]) == {Quality.EXCEPTION}
    assert "exception" in (h["refuses"].last_error or "")
    assert h["refuses"].errors_total == 2 and not h["refuses"].online

    # Busy: retried every cycle, never offline, however long it lasts.
    for c in cycles[:4]:
        assert qualities(c.readings["busy"]) == {Quality.EXCEPTION}
    assert qualities(cycles[4].readings["busy"]) == {Quality.GOOD}
    assert busy.calls == 5
    assert h["busy"].online and h["busy"].errors_total == 4
    assert "busy" in (h["busy"].last_error or "")

    # A bad CRC and a truncated reply are both "no valid reply": gaps, errors, then recovery.
    for c in cycles[:4]:
        assert qualities(c.readings["noisy"]) <= {Quality.TIMEOUT, Quality.CORRUPT, Quality.OFFLINE}
    assert qualities(cycles[1].readings["noisy"]) <= {Quality.TIMEOUT, Quality.CORRUPT}
    assert h["noisy"].errors_total == 2
    assert not h["noisy"].online  # two failed cycles; offline_cooldown keeps it out for now

    # One request of two refused: its point is an EXCEPTION gap, the rest are good, no offline.
    for c in cycles:
        rows = {r.point: r.quality for r in c.readings["partial"]}
        assert rows.pop("power_factor") == Quality.EXCEPTION
        assert set(rows.values()) == {Quality.GOOD}
    assert h["partial"].online and h["partial"].errors_total == 1  # counted when it starts, not per poll
    assert "power_factor" in (h["partial"].last_error or "")


def test_a_12_point_profile_is_read_in_the_fewest_requests() -> None:
    meter = profile_meter("incomer", 7, "chint-dtsu666")
    assert len(meter.points) == 12

    async def main() -> tuple[list[Reading], list[tuple[int, int | None, int | None]]]:
        async with rtu_line([device_for(7, meter.points)], baud=9600) as line:
            driver = ModbusRtuDriver(rtu_bus(line.agent_port))
            try:
                rows = await driver.read(meter)
            finally:
                await driver.close()
            return rows, [(r.function, r.start, r.count) for r in line.relay.requests_for(7)]

    rows, requests = asyncio.run(main())
    assert qualities(rows) == {Quality.GOOD}
    # The datasheet's addresses: energies 0x101E/0x1028 (gap 8), Ua..Qt 0x2006–0x201B (gaps ≤ 6),
    # PFt 0x202A (gap 14 > max_gap 10), Freq 0x2044. Four requests is the minimum at max_gap 10.
    assert requests == [(3, 0x101E, 12), (3, 0x2006, 22), (3, 0x202A, 2), (3, 0x2044, 2)]



class SlowRegister:
    """A meter action that answers after 50 ms, and `extra` seconds later for register 100."""

    def __init__(self, extra: float) -> None:
        self.extra = extra

    async def act(self, function_code: int, start_address: int, address: int, count: int,
                  registers: list[int], set_values: object) -> None:
        await asyncio.sleep(0.05 + (self.extra if address == 100 else 0.0))


@pytest.mark.parametrize("retries", [0, 1])
def test_a_late_reply_is_never_taken_for_the_next_request(retries: int) -> None:
    # Two one-register requests to one meter; once, register 100 answers 25 ms after the
    # timeout. On a real line that late frame sits in the UART until the next request. With
    # retries, pymodbus resends after the timeout and takes the first copy's late answer for
    # the second's: the answer to the second copy is then the late frame.
    points = [PointConfig(name="a", register=0, type="u16"),
              PointConfig(name="b", register=100, type="u16")]
    meter = inline_meter("m", 1, points, max_gap=0)
    slow = SlowRegister(extra=0.075)
    device = device_for(1, points, {"a": 111, "b": 222}, max_gap=0)
    device.action = slow.act

    async def main() -> tuple[list[list[Reading]], list[int | None], int]:
        async with rtu_line([device]) as line:
            driver = ModbusRtuDriver(rtu_bus(line.agent_port, timeout=0.1, retries=retries))
            cycles = []
            try:
                for _ in range(3):
                    cycles.append(await driver.read(meter))
                    slow.extra = 0.0
            finally:
                await driver.close()
            return cycles, [r.start for r in line.relay.requests_for(1)], driver.guard.waits

    cycles, starts, waits = asyncio.run(main())
    if retries == 0:
        assert [r.quality for r in cycles[0]] == [Quality.GOOD, Quality.TIMEOUT]
    else:
        assert starts[:3] == [0, 100, 100], "pymodbus did not resend the slow request"
    for rows in cycles:
        for r in rows:
            # A gap is acceptable after line noise; a wrong value marked GOOD never is.
            if r.quality == Quality.GOOD:
                assert r.value == {"a": 111, "b": 222}[r.point], (r.point, r.value)
    # After the one slow reply the line is healthy again: nothing more is lost.
    assert all(r.quality == Quality.GOOD for rows in cycles[1:] for r in rows)
    # The guard stood between the late frame and the next request, once.
    assert waits == 1


class Converter:
    """An RS-485/Ethernet converter in RTU pass-through mode: one TCP client at a time (a new
    connection replaces the old), bytes copied both ways as they are. Like a real one it hands
    whatever the line sends to whoever is connected now — a late reply included."""

    def __init__(self, serial_port: str) -> None:
        self.serial_port = serial_port
        self.connections = 0
        self._fd = -1
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._fd = os.open(self.serial_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd, termios.TCSANOW)
        asyncio.get_running_loop().add_reader(self._fd, self._from_line)
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        # Let the client handlers see their EOF and end, rather than be cancelled at loop exit.
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 2)
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)

    def _from_line(self) -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(self._fd, 1024)
            if self._writer is not None and not self._writer.is_closing():
                self._writer.write(data)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        if self._writer is not None:
            self._writer.close()
        self._writer = writer
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                os.write(self._fd, data)
        if self._writer is writer:
            self._writer = None
        writer.close()


def test_a_late_reply_through_a_converter_is_never_taken_for_the_next_request() -> None:
    # modbus-rtu-over-tcp reconnects after a silence, but the converter forwards the late
    # frame to the new connection: a fresh socket alone does not protect RTU framing.
    points = [PointConfig(name="a", register=0, type="u16"),
              PointConfig(name="b", register=100, type="u16")]
    meter = inline_meter("m", 1, points, max_gap=0)
    slow = SlowRegister(extra=0.075)
    device = device_for(1, points, {"a": 111, "b": 222}, max_gap=0)
    device.action = slow.act

    async def main() -> tuple[list[list[Reading]], int, int]:
        async with rtu_line([device]) as line:
            converter = Converter(line.agent_port)
            port = await converter.start()
            bus = BusConfig(name="rs485-1", kind="modbus-rtu-over-tcp", host="127.0.0.1",
                            port=port, timeout=0.1, retries=0)
            driver = ModbusRtuDriver(bus)
            cycles = []
            try:
                for _ in range(3):
                    cycles.append(await driver.read(meter))
                    slow.extra = 0.0
            finally:
                await driver.close()
                await converter.stop()
            return cycles, converter.connections, driver.guard.waits

    cycles, connections, waits = asyncio.run(main())
    assert [r.quality for r in cycles[0]] == [Quality.GOOD, Quality.TIMEOUT]
    assert connections == 2  # it did reconnect after the silence
    for rows in cycles[1:]:
        assert [(r.quality, r.value) for r in rows] == [(Quality.GOOD, 111), (Quality.GOOD, 222)]
    assert waits == 1


def test_the_guard_costs_a_healthy_line_and_a_silent_meter_nothing() -> None:
    # The wait after a silence only ever delays the next request to the same unit, and only
    # until two timeouts after the unanswered request: not other meters, not the next cycle.
    timeout = 0.1
    live, dead = inline_meter("live", 1, POINTS), inline_meter("dead", 2, POINTS)

    async def main() -> tuple[list[float], list[float], float, int]:
        async with rtu_line([device_for(u, POINTS) for u in (1, 2)]) as line:
            line.relay.set_fault(2, "silent")
            driver = ModbusRtuDriver(rtu_bus(line.agent_port, timeout=timeout, retries=0))
            live_s, dead_s = [], []
            try:
                for _ in range(3):  # cycles on a 0.3 s grid, silent meter in the middle
                    for m, spent in ((live, live_s), (dead, dead_s), (live, live_s)):
                        start = time.monotonic()
                        try:
                            rows = await driver.read(m)
                            assert qualities(rows) == {Quality.GOOD}
                        except MeterError:
                            assert m is dead
                        spent.append(time.monotonic() - start)
                    await asyncio.sleep(0.3)
                waits = driver.guard.waits
                # Back to back, the silent meter's second request waits out its window.
                with pytest.raises(MeterError):
                    await driver.read(dead)
                start = time.monotonic()
                with pytest.raises(MeterError):
                    await driver.read(dead)
                again = time.monotonic() - start
            finally:
                await driver.close()
            return live_s, dead_s, again, waits

    live_s, dead_s, again, waits = asyncio.run(main())
    assert waits == 0
    assert max(live_s) < timeout / 2, live_s  # right after the silence, no wait
    assert all(timeout <= s < timeout * 1.5 for s in dead_s), dead_s  # one timeout, no more
    assert 2 * timeout <= again < 2 * timeout + 0.1, again
