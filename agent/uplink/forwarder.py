"""The forwarder: drains one destination's outbox through an uplink, oldest first.

A sliding window: up to `window` envelopes in flight, sent in seq order (tasks start in
creation order and each sends before its first await), refilled with rows after the highest
seq already sent, so nothing in flight is fetched twice and nothing delivered is ever sent
again. Acknowledged seqs are marked delivered in batches (everything that completed while
the previous store call ran). On a link failure the window stops growing, drains, and the
same rows are retried — byte-identical, straight from the store — after a back-off.

Store calls go through the store's one thread (agent/runtime/store_thread.py). A store failure
ends `run()` (the app must stop); anything the uplink throws is logged in one line and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from agent.runtime.backoff import Backoff
from agent.runtime.conditions import Conditions
from agent.runtime.store_thread import StoreThread
from buffer.names import MQTT

log = logging.getLogger("energy_agent.forwarder")
_R = TypeVar("_R")


class UplinkDown(Exception):
    """The link is not usable right now; retry the same envelope later."""


class AckTimeout(Exception):
    """Sent, but no acknowledgement in time; resend the same bytes later."""


class Undeliverable(Exception):
    """This envelope can never get through as things are: set it aside (a dead letter), do
    not let it hold up the ones behind it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PlatformRejected(Undeliverable):
    """The platform refused this envelope for good: never resend it."""


class TooLarge(Undeliverable):
    """The envelope is larger than the broker accepts (it would disconnect us every time)."""


class Uplink(Protocol):
    name: str
    connection_changed: asyncio.Event  # set on every connect/disconnect; consumers clear it

    @property
    def connected(self) -> bool: ...

    async def publish(self, topic: str, payload: bytes, envelope_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    """What others may know of one destination's forwarding (the heartbeat reads it)."""

    destination: str
    connected: bool
    delivered_total: int
    rejected_total: int
    failures_total: int
    last_delivered_seq: int | None
    last_delivered_ms: int | None
    last_error: str | None


class Forwarder:
    def __init__(
        self,
        store: Any,
        store_thread: StoreThread,
        uplink: Uplink,
        destination: str = MQTT,
        window: int = 20,
        idle_check: float = 5.0,
        backoff_min: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        self.store = store
        self.store_thread = store_thread
        self.uplink = uplink
        self.destination = destination
        self.window = max(1, window)
        self.idle_check = idle_check
        # Low cap: once the link is back, the next round follows within seconds (see backoff.py).
        self.backoff = Backoff(backoff_min, backoff_max)
        self._conditions = Conditions(log)
        self._wake = asyncio.Event()
        # Stats for status/heartbeat.
        self.delivered_total = 0
        self.rejected_total = 0
        self.failures_total = 0
        self.last_delivered_seq: int | None = None
        self.last_delivered_ms: int | None = None
        self.last_error: str | None = None

    def wake(self) -> None:
        """New envelopes were enqueued (or we are stopping): look at the outbox now."""
        self._wake.set()

    def stats(self) -> ForwarderStats:
        return ForwarderStats(
            self.destination, self.uplink.connected, self.delivered_total, self.rejected_total,
            self.failures_total, self.last_delivered_seq, self.last_delivered_ms, self.last_error,
        )

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Forward until `stop` is set. Raises only what the store raises."""
        while not stop.is_set():
            if not self.uplink.connected:
                # Only the link coming back can help: wake() would fire on every seal and,
                # never cleared while we cannot drain, turn this wait into a busy loop.
                await self._sleep(stop, self.idle_check, wake=False)
                continue
            try:
                ok = await self._drain(stop)
            except _StoreFailed as e:
                raise e.__cause__ from None  # type: ignore[misc]
            except Exception as e:  # a bug here: log it with its trace, never stop forwarding
                self._failed(f"{type(e).__name__}: {e}", unexpected=True)
                ok = False
            if ok is None:
                await self._sleep(stop, self.idle_check)  # nothing pending
            elif not ok:
                await self._sleep(stop, self.backoff.next(), wake=False)

    async def _drain(self, stop: asyncio.Event) -> bool | None:
        """Send until the outbox is empty (None), a failure (False) or stop (True)."""
        loop = asyncio.get_running_loop()
        inflight: dict[asyncio.Task[None], Any] = {}
        sent_upto = 0  # highest seq handed to the uplink in this round
        failed: str | None = None
        exhausted = False
        stop_deadline: float | None = None
        try:
            while True:
                sending = failed is None and not stop.is_set()
                if sending and len(inflight) < self.window and (not exhausted or self._wake.is_set()):
                    self._wake.clear()  # before the read: a wake() during it is not lost
                    rows = await self._store(
                        self.store.outbox.pending, self.destination, self.window - len(inflight),
                        sent_upto,
                    )
                    exhausted = len(rows) < self.window - len(inflight)
                    for row in rows:
                        inflight[asyncio.create_task(self._send(row))] = row
                        sent_upto = row.seq
                if not inflight:
                    if failed is not None:
                        return False
                    return True if stop.is_set() else None
                waits: set[asyncio.Future[Any]] = set(inflight)
                extras: list[asyncio.Future[Any]] = []
                timeout = None
                if stop.is_set():
                    # Let what is in flight finish briefly; the rest is resent next run.
                    stop_deadline = stop_deadline or loop.time() + 2.0
                    timeout = stop_deadline - loop.time()
                    if timeout <= 0:
                        return True
                else:
                    extras.append(asyncio.ensure_future(stop.wait()))
                    if sending and len(inflight) < self.window:
                        extras.append(asyncio.ensure_future(self._wake.wait()))
                waits.update(extras)
                try:
                    done, _ = await asyncio.wait(
                        waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for extra in extras:
                        extra.cancel()
                finished = {t: inflight.pop(t) for t in done if t in inflight}
                failure = await self._settle(finished)
                failed = failed or failure
                if failed is not None and not inflight:
                    self._failed(failed)
        finally:
            for t in inflight:
                t.cancel()

    async def _settle(self, finished: dict[asyncio.Task[None], Any]) -> str | None:
        """Record what finished: mark delivered (one batch), mark rejected; return a failure."""
        delivered: list[int] = []
        failure: str | None = None
        for task, row in sorted(finished.items(), key=lambda item: item[1].seq):
            if task.cancelled():
                failure = failure or f"{row.id}: cancelled"
                continue
            exc = task.exception()
            if exc is None:
                delivered.append(row.seq)
            elif isinstance(exc, Undeliverable):
                self.rejected_total += 1
                if isinstance(exc, TooLarge):
                    log.error("envelope %s (seq %d) set aside, not sent: %s — raise the broker's "
                              "limit (and platform.max_packet_bytes), then `energy-agent resend %d`",
                              row.id, row.seq, exc.reason, row.seq)
                else:
                    log.warning("envelope %s (seq %d) rejected by the platform, not resent: %s",
                                row.id, row.seq, exc.reason)
                await self._store(self.store.outbox.mark_rejected, self.destination, row.seq, exc.reason)
            elif isinstance(exc, (UplinkDown, AckTimeout)):
                failure = failure or f"{row.id}: {type(exc).__name__}: {exc}"
            else:
                failure = failure or f"{row.id}: unexpected {type(exc).__name__}: {exc}"
        if delivered:
            await self._mark_delivered(delivered)
        return failure

    async def _send(self, row: Any) -> None:
        await self.uplink.publish(row.topic, row.payload, row.id)

    async def _mark_delivered(self, seqs: list[int]) -> None:
        await self._store(self.store.outbox.mark_delivered, self.destination, seqs)
        self.delivered_total += len(seqs)
        top = max(seqs)
        if self.last_delivered_seq is None or top > self.last_delivered_seq:
            self.last_delivered_seq = top
        self.last_delivered_ms = int(time.time() * 1000)
        self.backoff.reset()
        self._conditions.over("paused", f"{self.destination}: forwarding resumed")
        log.debug("delivered %d envelope(s) up to seq %d", len(seqs), top)

    async def _store(self, fn: Callable[..., _R], *args: Any) -> _R:
        try:
            return await self.store_thread.call(fn, *args)
        except Exception as e:
            raise _StoreFailed() from e

    # -- failures and waiting ----------------------------------------------------------------

    def _failed(self, what: str, unexpected: bool = False) -> None:
        self.failures_total += 1
        self.last_error = what
        if unexpected:
            log.error("forwarder round failed: %s", what, exc_info=True)
        # One line when forwarding stops, one an hour while it stays stopped, one when it resumes.
        self._conditions.happening(
            "paused", f"{self.destination}: forwarding paused: {what}",
            f"{self.destination}: forwarding still paused", what,
        )

    async def _sleep(self, stop: asyncio.Event, seconds: float, wake: bool = True) -> None:
        """Sleep until the timeout, stop, the link changing state, or (if wake) wake()."""
        self.uplink.connection_changed.clear()
        events = [stop.wait(), self.uplink.connection_changed.wait()]
        if wake:
            events.append(self._wake.wait())
        tasks = [asyncio.ensure_future(e) for e in events]
        try:
            await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)


class _StoreFailed(Exception):
    """Wraps a store exception so it leaves run() instead of being retried."""
