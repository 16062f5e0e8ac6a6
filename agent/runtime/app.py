"""Builds the daemon's parts and runs them; owns no logic of its own.

Threads: the asyncio loop (polling, scheduling, uplink futures), paho's network thread, and one
SQLite thread through which every store call goes (agent/runtime/store_thread.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from agent.accounting.reports import Reporter
from agent.config import Config
from agent.config.destinations import destination_types
from agent.protocol.envelope import topic_for
from agent.protocol.sealer import ClockImplausible, Sealer
from agent.protocol.signing import Signer, load_signer
from agent.runtime import sdnotify
from agent.runtime.batcher import CommitBatcher
from agent.runtime.clock import ClockWatch
from agent.runtime.conditions import Conditions, Overruns
from agent.runtime.heartbeat import Heartbeat, last_will
from agent.runtime.malloc_tuning import keep_small_buffers_off_mmap
from agent.runtime.poller import BusPoller
from agent.runtime.read_plans import load_read_plan, save_read_plan
from agent.runtime.store_thread import StoreThread
from agent.runtime.supervise import supervise
from agent.runtime.watchdog import Watchdog
from agent.uplink.factory import backoff, open_uplink, window
from agent.uplink.forwarder import Forwarder
from buffer.retention import prune
from buffer.store import MeterStatus, Store, StoreError
from drivers.base import Reading
from drivers.factory import open_driver

log = logging.getLogger("agent.runtime.app")
DAY_MS = 86_400_000
GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation
# An interval trigger that starts at the epoch fires on the wall-clock multiples of its
# interval (:00, :15, … for 15 s), so every bus and every seal lands on the same clock marks.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class App:
    """Every part is built here, in the constructor, with what it needs; `run` starts them,
    waits for a stop and shuts them down in order."""

    def __init__(self, cfg: Config, store_thread: StoreThread, store: Store, signer: Signer) -> None:
        self.cfg = cfg
        self.store_thread = store_thread
        self.store = store
        self.stop = asyncio.Event()
        # The forwarder outlives `stop` briefly, to flush what the last seal produced.
        self.forward_stop = asyncio.Event()
        self.exit_code = 0
        self.polls_running: set[asyncio.Task[Any]] = set()
        self.budget_pressed = False  # the last pruning pass had to drop or could not get under
        self.overruns = Overruns(Conditions(log), cfg.schedule.poll_interval)
        self.clock = ClockWatch()
        self.sealer = Sealer(cfg, store, signer)
        self.reporter = Reporter(cfg, store, self.sealer)
        # One uplink and one forwarder task per destination: each has its own cursor, window
        # and back-off, so one being down, slow or refusing never delays another.
        will = last_will(cfg, signer)
        self.forwarders: list[Forwarder] = []
        for dest in cfg.destination:
            lo, hi = backoff(dest)
            self.forwarders.append(Forwarder(store, store_thread, open_uplink(dest, cfg, store, store_thread, will),
                                             dest.name, window(dest), backoff_min=lo, backoff_max=hi))
        self.watchdog = Watchdog()
        self.batcher = CommitBatcher(self._commit, window=min(0.2, cfg.schedule.poll_interval / 4),
                                     committed=self._committed, failed=self._fatal)
        self.pollers = [
            BusPoller(bus, meters, open_driver(bus), self._sink(bus.name), on_plan=self._plan_changed)
            for bus in cfg.bus
            if (meters := [m for m in cfg.meter if m.bus == bus.name])
        ]
        for p in self.pollers:
            self.watchdog.register(p.bus.name, cfg.schedule.poll_interval)
        self.heartbeat = Heartbeat(cfg, store, self.clock, self.pollers, self.forwarders)
        self.scheduler = self._scheduler()

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        statuses = await self.store_thread.call(self.store.state.meter_statuses)
        plans = {m.name: await self.store_thread.call(load_read_plan, self.store, m.name)
                 for m in cfg.meter}
        for p in self.pollers:
            p.restore(statuses, plans)
        for f in self.forwarders:
            await f.uplink.start()
        tasks = [
            asyncio.create_task(
                supervise(f"forwarder {f.destination}", functools.partial(f.run, self.forward_stop),
                          self.forward_stop)
            )
            for f in self.forwarders
        ]
        tasks.append(
            asyncio.create_task(supervise("watchdog", lambda: self.watchdog.run(self.stop), self.stop)))
        log.info(
            "started: gateway %s, %d bus(es), %d meter(s), poll every %g s, store %s",
            cfg.agent.gateway, len(cfg.bus), len(cfg.meter), cfg.schedule.poll_interval, cfg.db_path,
        )
        await self._seal()  # catch up on anything a previous run committed but did not seal
        self.scheduler.start()
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
            await self._shutdown(tasks)
        return self.exit_code

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

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        scheduler = self.scheduler
        scheduler.pause()  # no new cycles; the ones running finish and commit
        if self.polls_running:
            await asyncio.wait(self.polls_running, timeout=10)
        scheduler.shutdown(wait=False)
        with contextlib.suppress(Exception):  # a failed commit was reported through _fatal
            await self.batcher.flush()
        with contextlib.suppress(Exception):
            # Health as it is now (the poller stores it only when it changes meaning, and
            # its last-good time once a minute): the next start and `status` begin from here.
            statuses = [s for p in self.pollers for s in p.statuses()]
            await self.store_thread.call(self.store.readings.add_encoded, [], statuses)
        with contextlib.suppress(Exception):
            await self._seal()
        await self._flush(grace=3.0)
        self.forward_stop.set()
        for f in self.forwarders:
            await f.uplink.stop(grace=2.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in self.pollers:
            with contextlib.suppress(Exception):
                await p.driver.close()
        await self.store_thread.call(self.store.close)
        self.store_thread.shutdown()
        log.info("stopped")

    async def _flush(self, grace: float) -> None:
        """Give the outbox a short chance to empty; whatever is left goes out after restart."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        waiting = [f for f in self.forwarders if f.uplink.connected]
        while waiting and loop.time() < deadline:
            try:
                pending = [(f, (await self.store_thread.call(self.store.outbox.backlog, f.destination))[0])
                           for f in waiting]
            except StoreError:
                return
            waiting = [f for f, n in pending if n > 0 and f.uplink.connected and not f.deferred]
            for f in waiting:
                f.wake()
            await asyncio.sleep(0.05)

    def _wake_forwarders(self) -> None:
        for f in self.forwarders:
            f.wake()

    def _sink(self, bus: str) -> Callable[[list[Sequence[Reading]], list[MeterStatus]], Any]:
        async def sink(readings: list[Sequence[Reading]], statuses: list[MeterStatus]) -> None:
            self.batcher.add(bus, readings, statuses)

        return sink

    def _plan_changed(self, meter: str, plan: list[str] | None) -> None:
        """A meter's refused points were found (or are gone): keep its read plan for `status`."""
        task = asyncio.ensure_future(self.store_thread.call(save_read_plan, self.store, meter, plan))
        self.polls_running.add(task)  # shutdown waits for it like for a cycle
        task.add_done_callback(self.polls_running.discard)

    def _committed(self, buses: set[str]) -> None:
        """A bus is alive once its samples are durable, not when they were read."""
        for bus in buses:
            self.watchdog.beat(bus)
        if not self.watchdog.ready:
            # READY after the first commit: one slow line must not hold up start-up.
            self.watchdog.mark_ready(f"polling {len(self.pollers)} bus(es)")

    async def _commit(self, polls: list[Sequence[Reading]], statuses: list[MeterStatus]) -> None:
        rows = self.store.readings.encode_polls(polls)  # here, where the readings are cache-hot
        await self.store_thread.call(self.store.readings.add_encoded, rows, statuses)

    def _scheduler(self) -> AsyncIOScheduler:
        cfg = self.cfg
        sched = AsyncIOScheduler(timezone=cfg.tz)
        # One job for every bus (they share poll_interval): it starts each bus's cycle as a task
        # of its own, so a slow line never holds up the others and the scheduler's per-job
        # work is paid once per tick, not once per bus (a job per bus cost +25–35 µs of CPU per
        # bus-tick; docs/architecture.md).
        sched.add_job(
            self._start_polls, IntervalTrigger(seconds=cfg.schedule.poll_interval, start_date=EPOCH),
            id="poll", max_instances=1, coalesce=True,
            misfire_grace_time=max(1, int(cfg.schedule.poll_interval)),
        )
        # Sealing and reports drain whatever is due whenever they run, so a late run loses
        # nothing; a generous grace only avoids needless skips.
        sched.add_job(self._seal, IntervalTrigger(seconds=cfg.schedule.seal_interval, start_date=EPOCH),
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
                p.missed_tick()
                self._overrun(p)

    def _overrun(self, poller: BusPoller) -> None:
        """The one place a skipped cycle is reported (the poller has counted it): a condition,
        not a line per skipped cycle — 100 overrunning buses polled every second once wrote
        24,000 lines in minutes."""
        self.overruns.skipped(poller.bus.name)

    async def _start_polls(self) -> None:
        """One tick of the poll clock: start every bus's cycle; a bus whose previous cycle is
        still running skips this one, counted and logged as an overrun."""
        if self.stop.is_set():
            return
        for p in self.pollers:
            task = p.start_cycle()
            if task is None:
                self._overrun(p)
                continue
            self.overruns.on_time(p.bus.name)
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
            made = await self.store_thread.call(self._seal_in_db)
        except ClockImplausible:
            return
        except StoreError as e:
            self._fatal(e)
            return
        if made:
            self._wake_forwarders()

    def _seal_in_db(self) -> int:
        step = self.clock.check()
        if step is not None:
            now = int(time.time() * 1000)
            self.store.state.add_event("clock", now, {"step_ms": int(step * 1000), "at_ms": now})
        made = self.sealer.seal_chain_records()  # first: it explains the seqs that follow
        made += self.sealer.seal_readings()
        return made + len(self.reporter.seal_due(int(time.time() * 1000)))

    async def _heartbeat(self) -> None:
        try:
            await self.store_thread.call(self.sealer.check_clock)
            live = self.heartbeat.live()  # here on the loop, where the pollers' state changes
            await self.store_thread.call(self.heartbeat.seal_status, self.sealer, live)
            self._wake_forwarders()
        except ClockImplausible:
            pass
        except StoreError as e:
            self._fatal(e)

    async def _retention(self) -> None:
        s = self.cfg.storage
        try:
            report = await self.store_thread.call(
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


async def build(cfg: Config) -> App:
    """Load the key, open the store on its thread, build the App: everything short of a
    connection or a started job. Whatever a config can break breaks here
    (tests/test_config_fuzz.py builds it from every config check-config accepts)."""
    signer = load_signer(cfg.signing.key_file, cfg.signing.key_id)
    store_thread = StoreThread()
    # topic_of: a corrupt store's envelopes whose outbox row is gone can still be salvaged.
    assert cfg.platform is not None  # resolve_destinations leaves the topics' MQTT settings
    store = await store_thread.call(Store, cfg.db_path, destination_types(cfg), False, functools.partial(
        topic_for, cfg.platform.topic_prefix, cfg.agent.enterprise, cfg.agent.gateway))
    return App(cfg, store_thread, store, signer)


async def serve(cfg: Config) -> int:
    """Build the App and run it."""
    return await (await build(cfg)).run()


def run_agent(cfg: Config) -> int:
    keep_small_buffers_off_mmap()
    return asyncio.run(serve(cfg))
