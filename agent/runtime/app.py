"""Wires the daemon together; owns no logic of its own.

Threads: the asyncio loop (polling, scheduling, uplink futures), paho's network thread, and one
SQLite thread through which every store call goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from agent.config import Config
from agent.protocol.sealer import ClockImplausible, Sealer
from agent.protocol.signing import load_signer
from agent.runtime import sdnotify
from agent.runtime.batcher import CommitBatcher
from agent.runtime.clock import ClockWatch
from agent.runtime.conditions import Conditions, Overruns
from agent.runtime.heartbeat import Heartbeat
from agent.runtime.malloc_tuning import keep_small_buffers_off_mmap
from agent.runtime.poller import BusPoller
from agent.runtime.read_plans import load_read_plan, save_read_plan
from agent.runtime.supervise import supervise
from agent.runtime.watchdog import Watchdog
from agent.uplink.forwarder import Forwarder
from agent.uplink.mqtt import MqttUplink
from buffer.names import MQTT
from buffer.retention import prune
from buffer.store import MeterStatus, Store, StoreError
from drivers.base import Reading
from drivers.factory import open_driver

log = logging.getLogger("agent.runtime.app")
T = TypeVar("T")
DAY_MS = 86_400_000
GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation


def aligned_start(interval: float, now: float | None = None) -> datetime:
    """The next wall-clock multiple of `interval` seconds, so polls land on :00, :15, …"""
    now = time.time() if now is None else now
    nxt = (int(now // interval) + 1) * interval
    return datetime.fromtimestamp(nxt, UTC)


class App:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self.stop = asyncio.Event()
        # The forwarder outlives `stop` briefly, to flush what the last seal produced.
        self.forward_stop = asyncio.Event()
        self.exit_code = 0
        self.polls_running: set[asyncio.Task[Any]] = set()
        self.cycles: dict[str, asyncio.Task[None]] = {}  # each bus's latest poll cycle
        self.first_poll_done = False
        self.budget_pressed = False  # the last pruning pass had to drop or could not get under
        self.overruns = Overruns(Conditions(log), cfg.schedule.poll_interval)

    async def in_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        await self.build()
        cfg = self.cfg

        await self.uplink.start()
        scheduler = self._scheduler()
        tasks = [
            asyncio.create_task(
                supervise("forwarder", lambda: self.forwarder.run(self.forward_stop), self.forward_stop)
            ),
            asyncio.create_task(supervise("watchdog", lambda: self.watchdog.run(self.stop), self.stop)),
        ]
        log.info(
            "started: gateway %s, %d bus(es), %d meter(s), poll every %g s, store %s",
            cfg.agent.gateway, len(cfg.bus), len(cfg.meter), cfg.schedule.poll_interval, cfg.db_path,
        )
        await self._seal()  # catch up on anything a previous run committed but did not seal
        scheduler.start()
        # Everything built so far (modules, config, pollers, clients) lives as long as the
        # process: move it out of the collector's sight so full collections stay cheap.
        gc.collect()
        gc.freeze()
        # Every in-flight Modbus transaction holds a few dozen tracked objects (task, futures,
        # coroutines, PDUs), and at the default threshold of 700 the collector traverses all of
        # them several times per tick only to find no garbage: the steady state makes no
        # cycles. At 10,000 allocations the loop's CPU per transaction drops by ~30 µs with 100
        # meters (bench/README.md); what cycles do appear (an exception's traceback held by
        # its handler) still go within a few ticks.
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
        try:
            await self._wait(tasks)
        finally:
            await self._shutdown(scheduler, tasks)
        return self.exit_code

    async def build(self) -> None:
        """Everything the daemon is made of, short of a connection or a started job: opening
        the store, loading the key, the uplink's client, the drivers, the scheduler's jobs.
        Whatever a config can break breaks here (tests/test_config_fuzz.py builds it)."""
        cfg = self.cfg
        signer = load_signer(cfg.signing.key_file, cfg.signing.key_id)
        self.store = await self.in_db(Store, cfg.db_path, (MQTT,))
        self.sealer = Sealer(cfg, self.store, signer)
        self.reporter = self._reporter()
        self.heartbeat = Heartbeat(cfg, self.store, signer)
        self.clock = ClockWatch()
        self.heartbeat.clock = self.clock
        self.uplink = MqttUplink(cfg.platform, cfg.agent.enterprise, cfg.agent.gateway,
                                 will=self.heartbeat.will())
        self.forwarder = Forwarder(self.store, self.db, self.uplink, MQTT, cfg.platform.inflight)
        self.heartbeat.forwarder = self.forwarder
        self.watchdog = Watchdog()
        self.batcher = CommitBatcher(self._commit, window=min(0.2, cfg.schedule.poll_interval / 4),
                                     committed=self._committed, failed=self._fatal)
        self.pollers = self._pollers()
        statuses = await self.in_db(self.store.state.meter_statuses)
        plans = {m.name: await self.in_db(load_read_plan, self.store, m.name) for m in cfg.meter}
        for p in self.pollers:
            p.restore(statuses, plans)
            self.watchdog.register(p.bus.name, cfg.schedule.poll_interval)
        self.heartbeat.pollers = self.pollers
        self._scheduler()  # jobs and triggers from the config's intervals; run() makes its own

    def request_stop(self, why: str) -> None:
        if not self.stop.is_set():
            log.info("stopping (%s)", why)
            sdnotify.stopping(f"stopping ({why})")
            self.stop.set()

    async def _wait(self, tasks: list[asyncio.Task[None]]) -> None:
        stop_task = asyncio.create_task(self.stop.wait())
        done, _ = await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stop_task and t.exception() is not None:
                self._fatal(t.exception())
        stop_task.cancel()

    def _fatal(self, e: BaseException | None) -> None:
        log.critical("store failure, exiting so systemd restarts the agent: %s", e)
        self.exit_code = 1
        self.stop.set()

    async def _shutdown(self, scheduler: AsyncIOScheduler, tasks: list[asyncio.Task[None]]) -> None:
        scheduler.pause()  # no new cycles; the ones running finish and commit
        if self.polls_running:
            await asyncio.wait(self.polls_running, timeout=10)
        scheduler.shutdown(wait=False)
        with contextlib.suppress(Exception):  # a failed commit was reported through _fatal
            await self.batcher.flush()
        with contextlib.suppress(Exception):
            # Health as it is now (the poller stores it only when it changes meaning, and
            # its last-good time once a minute): the next start and `status` begin from here.
            await self.in_db(self.store.readings.add_encoded, [], [s for p in self.pollers for s in p.statuses()])
        with contextlib.suppress(Exception):
            await self._seal()
        await self._flush(grace=3.0)
        self.forward_stop.set()
        await self.uplink.stop(grace=2.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in self.pollers:
            with contextlib.suppress(Exception):
                await p.driver.close()
        await self.in_db(self.store.close)
        self.db.shutdown(wait=True)
        log.info("stopped")

    async def _flush(self, grace: float) -> None:
        """Give the outbox a short chance to empty; whatever is left goes out after restart."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.uplink.connected and loop.time() < deadline:
            try:
                pending, _ = await self.in_db(self.store.outbox.backlog, MQTT)
            except StoreError:
                return
            if pending == 0:
                return
            self.forwarder.wake()
            await asyncio.sleep(0.05)

    def _pollers(self) -> list[BusPoller]:
        pollers = []
        for bus in self.cfg.bus:
            meters = [m for m in self.cfg.meter if m.bus == bus.name]
            if meters:
                pollers.append(BusPoller(bus, meters, open_driver(bus), self._sink(bus.name),
                                         on_plan=self._plan_changed))
        return pollers

    def _sink(self, bus: str) -> Callable[[list[Sequence[Reading]], list[MeterStatus]], Any]:
        async def sink(readings: list[Sequence[Reading]], statuses: list[MeterStatus]) -> None:
            self.batcher.add(bus, readings, statuses)

        return sink

    def _plan_changed(self, meter: str, plan: list[str] | None) -> None:
        """A meter's refused points were found (or are gone): keep its read plan for `status`."""
        task = asyncio.ensure_future(self.in_db(save_read_plan, self.store, meter, plan))
        self.polls_running.add(task)  # shutdown waits for it like for a cycle
        task.add_done_callback(self.polls_running.discard)

    def _committed(self, buses: set[str]) -> None:
        """A bus is alive once its samples are durable, not when they were read."""
        for bus in buses:
            self.watchdog.beat(bus)
        if not self.first_poll_done:
            # READY after the first commit: one slow line must not hold up start-up.
            self.first_poll_done = True
            self.watchdog.mark_ready(f"polling {len(self.pollers)} bus(es)")

    async def _commit(self, polls: list[Sequence[Reading]], statuses: list[MeterStatus]) -> None:
        rows = self.store.readings.encode_polls(polls)  # here, where the readings are cache-hot
        await self.in_db(self.store.readings.add_encoded, rows, statuses)

    def _reporter(self) -> Any:
        try:
            from agent.accounting.reports import Reporter
        except ImportError:  # accounting not installed in this build
            return None
        return Reporter(self.cfg, self.store, self.sealer)

    def _scheduler(self) -> AsyncIOScheduler:
        cfg = self.cfg
        sched = AsyncIOScheduler(timezone=cfg.tz)
        # One job for every bus (they share poll_interval): it starts each bus's cycle as a task
        # of its own, so a slow line never holds up the others and the scheduler's per-job
        # work is paid once per tick, not once per bus.
        sched.add_job(
            self._start_polls, IntervalTrigger(seconds=cfg.schedule.poll_interval,
                                               start_date=aligned_start(cfg.schedule.poll_interval)),
            id="poll", max_instances=1, coalesce=True,
            misfire_grace_time=max(1, int(cfg.schedule.poll_interval)),
        )
        # Sealing and reports drain whatever is due whenever they run, so a late run loses
        # nothing; a generous grace only avoids needless skips.
        sched.add_job(self._seal, IntervalTrigger(seconds=cfg.schedule.seal_interval,
                                                  start_date=aligned_start(cfg.schedule.seal_interval)),
                      id="seal", max_instances=1, coalesce=True, misfire_grace_time=3600)
        sched.add_job(self._heartbeat, IntervalTrigger(seconds=cfg.schedule.heartbeat),
                      id="heartbeat", max_instances=1, coalesce=True, misfire_grace_time=3600,
                      next_run_time=datetime.now(UTC) + timedelta(seconds=5))
        sched.add_job(self._retention, IntervalTrigger(seconds=cfg.storage.retention_interval),
                      id="retention", max_instances=1,
                      coalesce=True, misfire_grace_time=3600,
                      next_run_time=datetime.now(UTC)
                      + timedelta(seconds=min(30.0, cfg.storage.retention_interval)))
        sched.add_listener(self._job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        return sched

    def _job_event(self, event: JobExecutionEvent) -> None:
        if event.job_id == "poll":  # the whole tick was missed (the loop was blocked)
            for p in self.pollers:
                self._overrun(p.bus.name)

    def _overrun(self, bus: str) -> None:
        # A condition, not a line per skipped cycle: 100 overrunning buses polled every second
        # once wrote 24,000 lines in minutes.
        self.overruns.skipped(bus)
        if self.heartbeat:
            self.heartbeat.overruns[bus] = self.heartbeat.overruns.get(bus, 0) + 1

    async def _start_polls(self) -> None:
        """One tick of the poll clock: start every bus's cycle; a bus whose previous cycle is
        still running skips this one, counted and logged as an overrun."""
        if self.stop.is_set():
            return
        for p in self.pollers:
            running = self.cycles.get(p.bus.name)
            if running is not None and not running.done():
                self._overrun(p.bus.name)
                continue
            self.overruns.on_time(p.bus.name)
            # The cycle is the task itself (no wrapper coroutine): every resume of a task walks
            # its whole chain of coroutines, ~2 per transaction, 100 buses a second.
            task = self.cycles[p.bus.name] = asyncio.create_task(p.poll_once(), name=p.bus.name)
            self.polls_running.add(task)  # from now until it ends, shutdown waits for it
            task.add_done_callback(self._cycle_done)

    def _cycle_done(self, task: asyncio.Task[Any]) -> None:
        self.polls_running.discard(task)
        if task.cancelled():
            # Only at shutdown, past the grace for running cycles: what was read is lost,
            # nothing committed is. Not an error worth a traceback.
            log.info("bus %s: poll cycle cancelled at shutdown", task.get_name())
            return
        e = task.exception()
        if e is not None:  # the next tick starts a new cycle whatever happened to this one
            log.error("bus %s: poll cycle failed: %s: %s", task.get_name(), type(e).__name__, e)

    async def _seal(self) -> None:
        try:
            made = await self.in_db(self._seal_in_db)
        except ClockImplausible:
            return
        except StoreError as e:
            self._fatal(e)
            return
        if made:
            self.forwarder.wake()

    def _seal_in_db(self) -> int:
        step = self.clock.check()
        if step is not None:
            now = int(time.time() * 1000)
            self.store.state.add_event("clock", now, {"step_ms": int(step * 1000), "at_ms": now})
        made = self.sealer.seal_readings()
        if self.reporter is not None:
            made += len(self.reporter.seal_due(int(time.time() * 1000)))
        return made

    async def _heartbeat(self) -> None:
        try:
            await self.in_db(self.sealer.check_clock)
            await self.in_db(self.heartbeat.seal_status, self.sealer)
            self.forwarder.wake()
        except ClockImplausible:
            pass
        except StoreError as e:
            self._fatal(e)

    async def _retention(self) -> None:
        s = self.cfg.storage
        try:
            report = await self.in_db(
                prune, self.store, int(time.time() * 1000), int(s.raw_keep_days * DAY_MS),
                int(s.history_keep_days * DAY_MS), int(s.budget_mb * 1024 * 1024),
            )
            log.debug("retention: %s", report)
        except StoreError as e:
            self._fatal(e)
            return
        # Each pass under pressure logs its own lines (buffer/retention.py); this says when
        # the pressure is over.
        pressed = report.over_budget or report.dropped_envelopes or report.needed_readings
        if pressed:
            self.budget_pressed = True
        elif self.budget_pressed:
            self.budget_pressed = False
            log.info("disk budget: the store is within storage.budget_mb %g again (%d bytes)",
                     s.budget_mb, report.bytes_after)


def run_agent(cfg: Config) -> int:
    keep_small_buffers_off_mmap()
    return asyncio.run(App(cfg).run())
