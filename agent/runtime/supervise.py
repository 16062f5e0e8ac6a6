"""Long-lived tasks that cannot die silently: log once, back off, start again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent.runtime.backoff import Backoff
from buffer.store import StoreError

log = logging.getLogger("agent.runtime.supervise")


async def supervise(
    name: str,
    factory: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    backoff_min: float = 1.0,
    backoff_max: float = 60.0,
) -> None:
    """Run `factory()` until `stop` is set, restarting it after any unexpected exception.

    A StoreError is not survivable here: an agent that no longer knows what is on disk must
    not keep polling into the void, so it propagates and the process exits for systemd.
    """
    backoff = Backoff(backoff_min, backoff_max)
    while not stop.is_set():
        try:
            await factory()
            if stop.is_set():
                return
            why = "returned unexpectedly"
        except asyncio.CancelledError:
            raise
        except StoreError:
            raise
        except Exception as e:
            why = f"failed ({type(e).__name__}: {e})"
        delay = backoff.next()
        log.error("task %s %s; restarting in %.1f s", name, why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
