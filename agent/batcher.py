"""One transaction for the samples of every bus polled in the same moment.

Polls start on the same clock tick, so a short window gathers all buses' samples into one
commit: one fsync per tick instead of one per bus, which is what eMMC/SD storage can bear.
A poll counts as done only when its samples are committed (the caller awaits `add`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from buffer.store import MeterStatus
from drivers.base import Reading

Commit = Callable[[list[Reading], list[MeterStatus]], Awaitable[None]]


class CommitBatcher:
    def __init__(self, commit: Commit, window: float = 0.2) -> None:
        self.commit = commit
        self.window = window
        self._rows: list[Reading] = []
        self._statuses: list[MeterStatus] = []
        self._done: asyncio.Future[None] | None = None
        self._flushing: set[asyncio.Task[None]] = set()  # keeps the task alive until it ends

    async def add(self, readings: Sequence[Reading], statuses: Sequence[MeterStatus] = ()) -> None:
        """Queue samples for the next commit and return once they are committed (or raise)."""
        self._rows.extend(readings)
        self._statuses.extend(statuses)
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(self.window, self._start_flush)
        await asyncio.shield(self._done)

    async def flush(self) -> None:
        """Commit whatever is queued now (shutdown)."""
        if self._done is not None:
            await self._flush()

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self) -> None:
        done, self._done = self._done, None
        rows, self._rows = self._rows, []
        statuses, self._statuses = self._statuses, []
        if done is None or done.done():
            return
        try:
            await self.commit(rows, statuses)
        except BaseException as e:
            done.set_exception(e)
            done.exception()  # mark retrieved: every waiter re-raises it anyway
            return
        done.set_result(None)
