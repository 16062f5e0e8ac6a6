"""The Watchdog against a real notify socket, with real asyncio bus tasks beating or wedging."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from agent.runtime.watchdog import Watchdog

INTERVAL = 0.2  # WatchdogSec of the test: feeds every 0.1 s
PERIOD = 0.05  # bus poll period: allowed lateness = max(0.1, 0.4) = 0.4 s
SLACK = 0.15  # scheduling noise on a loaded CI machine


class Systemd:
    """The service manager's end of NOTIFY_SOCKET: records (monotonic time, message)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.got: list[tuple[float, str]] = []

    async def collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.got.append((time.monotonic(), data.decode()))

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.got if m == message]

    def messages(self) -> list[str]:
        return [m for _, m in self.got]


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    d = tempfile.mkdtemp(prefix="wd-")  # short path: sun_path is limited to 108 bytes
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(d)


async def bus_task(wd: Watchdog, name: str, wedge: asyncio.Event, unwedge: asyncio.Event) -> None:
    """A bus loop: poll, beat, sleep. When `wedge` is set it hangs like a stuck serial read."""
    while True:
        await asyncio.sleep(PERIOD)
        if wedge.is_set():
            await unwedge.wait()  # a reply that never comes (until the test says so)
            wedge.clear()
        wd.beat(name)


async def _start(notify_socket: socket.socket) -> tuple[Systemd, asyncio.Task[None]]:
    sd = Systemd(notify_socket)
    return sd, asyncio.create_task(sd.collect())


def test_wedged_bus_stops_the_feed_and_recovery_resumes_it(
    notify_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        sd, collector = await _start(notify_socket)
        wd = Watchdog(interval=INTERVAL)
        wd.register("rs485-1", PERIOD)
        wd.register("lan", PERIOD)
        assert wd.allowed_lateness("lan") == pytest.approx(2 * INTERVAL)
        stop = asyncio.Event()
        wedge, unwedge = asyncio.Event(), asyncio.Event()
        never = asyncio.Event()
        runner = asyncio.create_task(wd.run(stop))
        buses = [
            asyncio.create_task(bus_task(wd, "rs485-1", wedge, unwedge)),
            asyncio.create_task(bus_task(wd, "lan", asyncio.Event(), never)),
        ]

        # Healthy: a feed every INTERVAL/2.
        await asyncio.sleep(1.0)
        feeds = sd.times("WATCHDOG=1")
        assert len(feeds) >= 7, sd.got
        assert max(b - a for a, b in itertools.pairwise(feeds)) < INTERVAL / 2 + SLACK

        # Wedge rs485-1: its last beat is at most one PERIOD after this.
        wedge.set()
        wedged_at = time.monotonic()
        await asyncio.sleep(2 * INTERVAL + 1.0)
        last_feed = sd.times("WATCHDOG=1")[-1]
        deadline = wedged_at + PERIOD + wd.allowed_lateness("rs485-1") + wd.tick + SLACK
        assert last_feed <= deadline, (last_feed - wedged_at, sd.got[-5:])
        assert not wd.check()  # stale; which one, the log below says
        silent_since = time.monotonic() - last_feed
        assert silent_since > INTERVAL, "systemd would not have noticed the silence"
        wedged_logs = [r for r in caplog.records if "looks wedged" in r.getMessage()]
        assert len(wedged_logs) == 1 and "rs485-1" in wedged_logs[0].getMessage()

        # The read finally returns: feeding resumes without a restart.
        unwedge.set()
        resumed_at = time.monotonic()
        await asyncio.sleep(0.5)
        assert any(t > resumed_at for t in sd.times("WATCHDOG=1"))
        assert wd.check()
        assert any("beating again" in r.getMessage() for r in caplog.records)

        stop.set()
        await asyncio.wait_for(runner, 1.0)
        for t in [*buses, collector]:
            t.cancel()

    caplog.set_level(logging.INFO, logger="agent.runtime.watchdog")
    asyncio.run(scenario())


def test_ready_only_after_mark_ready_and_only_once(notify_socket: socket.socket) -> None:
    async def scenario() -> None:
        sd, collector = await _start(notify_socket)
        wd = Watchdog(interval=INTERVAL)
        stop = asyncio.Event()
        runner = asyncio.create_task(wd.run(stop))
        await asyncio.sleep(0.35)
        before = sd.messages()
        assert before and not any("READY=1" in m for m in before)
        # Before READY the start timeout is extended by one interval per tick.
        assert "EXTEND_TIMEOUT_USEC=200000" in before
        assert not wd.ready

        assert wd.mark_ready("polling 2 buses") is True
        assert wd.ready
        assert wd.mark_ready("3 meters ok") is True  # later: a STATUS update only
        await asyncio.sleep(0.35)
        msgs = sd.messages()
        assert [m for m in msgs if "READY=1" in m] == ["READY=1\nSTATUS=polling 2 buses"]
        assert "STATUS=3 meters ok" in msgs
        ready_at = next(t for t, m in sd.got if m.startswith("READY=1"))
        assert not any(m.startswith("EXTEND") for t, m in sd.got if t > ready_at + 0.01)
        assert any(t > ready_at for t in sd.times("WATCHDOG=1"))

        stop.set()
        await asyncio.wait_for(runner, 1.0)
        collector.cancel()

    asyncio.run(scenario())


def test_blocked_event_loop_sends_nothing(
    notify_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        sd, collector = await _start(notify_socket)
        wd = Watchdog(interval=INTERVAL)
        stop = asyncio.Event()
        runner = asyncio.create_task(wd.run(stop))
        await asyncio.sleep(0.25)
        blocked_from = time.monotonic()
        time.sleep(0.6)  # a synchronous call hogging the loop
        blocked_to = time.monotonic()
        await asyncio.sleep(0.25)
        # Nothing can have been *sent* while blocked (the collector also sat still, so check
        # the gap between consecutive feeds instead of receive times).
        feeds = sd.times("WATCHDOG=1")
        assert any(b - a >= 0.55 for a, b in itertools.pairwise(feeds))
        assert any(t > blocked_to for t in feeds)
        assert blocked_to - blocked_from >= 0.6
        assert any("event loop was blocked" in r.getMessage() for r in caplog.records)
        stop.set()
        await asyncio.wait_for(runner, 1.0)
        collector.cancel()

    caplog.set_level(logging.INFO, logger="agent.runtime.watchdog")
    asyncio.run(scenario())


def test_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    wd = Watchdog()
    assert wd.interval == 60.0 and wd.tick == 30.0
    wd.register("rs485-1", 300.0)
    wd.register("lan", 10.0)
    assert wd.allowed_lateness("rs485-1") == 600.0  # 2 × its period
    assert wd.allowed_lateness("lan") == 120.0  # 2 × WatchdogSec
    monkeypatch.delenv("WATCHDOG_USEC")
    assert Watchdog().interval is None


def test_disarmed_watchdog_sends_nothing(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)

    async def scenario() -> None:
        wd = Watchdog()
        stop = asyncio.Event()
        runner = asyncio.create_task(wd.run(stop))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(runner, 1.0)  # returns promptly despite the 30 s tick

    asyncio.run(scenario())
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)


def test_beat_of_unknown_source_is_an_error() -> None:
    wd = Watchdog(interval=1.0)
    with pytest.raises(KeyError):
        wd.beat("nope")
    with pytest.raises(ValueError):
        wd.register("b", 0)
