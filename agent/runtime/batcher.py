"""One transaction for the samples of every bus polled in the same moment.

Polls start on the same clock tick, so a short window gathers all buses' samples into one
commit: one fsync per tick instead of one per bus, which is what eMMC/SD storage can bear.

A poll cycle hands its samples over and ends; it does not wait for the commit. What must only
happen once samples are durable (the watchdog's beat for the bus, READY at start-up) is done by
`committed`, called with the names of the sources (buses) whose samples the commit held. A
failed commit goes to `failed` (the app stops: the store can no longer be trusted). Not
waiting saves every bus a task switch and a shielded future per cycle; a commit that hangs
still stops the watchdog, because no bus beats until its samples are committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from buffer.store import MeterStatus
from drivers.base import Reading

# What is committed: the samples of each meter's poll (a sequence per meter), health changes.
Commit = Callable[[list[Sequence[Reading]], list[MeterStatus]], Awaitable[None]]


class CommitBatcher:
    def __init__(
        self,
        commit: Commit,
        window: float = 0.2,
        committed: Callable[[set[str]], None] = lambda sources: None,
        failed: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        self.commit = commit
        self.window = window
        self.committed = committed
        self.failed = failed
        self._rows: list[Sequence[Reading]] = []
        self._statuses: list[MeterStatus] = []
        self._sources: set[str] = set()
        self._timer: asyncio.Handle | None = None
        # At most one commit in flight: the store has one writer, and a second commit queued
        # behind a slow one would only split what the next one can carry.
        self._task: asyncio.Task[BaseException | None] | None = None

    def add(self, source: str, polls: Sequence[Sequence[Reading]], statuses: Sequence[MeterStatus] = ()) -> None:
        """Queue `source`'s samples (one sequence per meter poll) for the next commit."""
        self._rows.extend(polls)
        self._statuses.extend(statuses)
        self._sources.add(source)
        if self._timer is None and self._task is None:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._start)

    @property
    def queued(self) -> int:
        return len(self._rows)

    async def flush(self) -> None:
        """Commit whatever is queued now and wait for it (shutdown). Raises what the commit
        raised, after `failed` has heard of it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._task is not None or self._sources:
            if self._task is None:
                self._start()
            task = self._task
            assert task is not None
            error = await asyncio.shield(task)
            if error is not None:
                raise error

    def _start(self) -> None:
        self._timer = None
        if self._task is not None or not self._sources:
            return
        rows, self._rows = self._rows, []
        statuses, self._statuses = self._statuses, []
        sources, self._sources = self._sources, set()
        self._task = asyncio.ensure_future(self._commit(rows, statuses, sources))

    async def _commit(self, rows: list[Sequence[Reading]], statuses: list[MeterStatus],
                      sources: set[str]) -> BaseException | None:
        try:
            await self.commit(rows, statuses)
        except Exception as e:
            self.failed(e)
            return e
        finally:
            self._task = None
            if self._sources and self._timer is None:
                # Samples arrived while this commit ran: they have waited long enough.
                self._timer = asyncio.get_running_loop().call_soon(self._start)
        self.committed(sources)
        return None
