"""The one thread every store call runs on.

A SQLite connection belongs to the thread that opened it, and the store has one writer: so the
daemon opens the store on this thread and sends every later call here, in submission order.
The event loop awaits the result and keeps polling meanwhile; an fsync never blocks it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class StoreThread:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the store thread; raises what it raises."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        """Wait for the calls already submitted, then end the thread."""
        self._pool.shutdown(wait=True)
