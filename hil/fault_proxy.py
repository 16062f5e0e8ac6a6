"""A TCP proxy on loopback between the agent and the broker that misbehaves on command.

Modes (`FaultProxy.set_mode`):

- "pass"        forward both ways;
- "cut"         reset every connection and refuse new ones (the listener closes): a
                pulled cable on the broker's side, seen as a connection error at once;
- "blackhole"   accept new connections but never answer, and stop forwarding on existing
                ones: a partitioned link. Bytes are held, not dropped — as TCP would keep
                retransmitting them — so a connection that outlives the hole resumes intact;
- "delay"       forward every chunk `delay` seconds late (per direction, order kept).

`flap(schedule)` cycles through [(mode, seconds), …] until another mode is set. Everything
runs on the caller's asyncio loop; `stats` counts connections and bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

MODES = ("pass", "cut", "blackhole", "delay")


@dataclass
class ProxyStats:
    accepted: int = 0
    refused_while_cut: int = 0
    bytes_up: int = 0  # agent -> broker
    bytes_down: int = 0
    mode_changes: int = 0


class FaultProxy:
    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.host, self.port = "127.0.0.1", listen_port
        self.mode = "pass"
        self.delay = 0.0
        self.stats = ProxyStats()
        self.restored_ms: list[int] = []  # when a fault ended (back to pass), for drain times
        self._open = asyncio.Event()  # set while bytes may flow
        self._open.set()
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._held: set[asyncio.StreamWriter] = set()  # accepted inside a black hole
        self._tasks: set[asyncio.Task[None]] = set()
        self._flapper: asyncio.Task[None] | None = None

    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def stop(self) -> None:
        self._cancel_flap()
        await self._close_listener()
        self._reset_all()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self) -> None:
        if self._server is None:
            # reuse_address: the port just closed by "cut" must be ours again at once.
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- control ---------------------------------------------------------------------------

    async def set_mode(self, mode: str, delay: float | None = None) -> None:
        """Switch mode now (cancels a running flap schedule)."""
        self._cancel_flap()
        await self._apply(mode, delay)

    async def _apply(self, mode: str, delay: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}, expected one of {', '.join(MODES)}")
        log.info("fault proxy :%d -> %s", self.port, mode)
        if mode == "pass" and self.mode != "pass":
            self.restored_ms.append(int(time.time() * 1000))
        self.mode = mode
        self.stats.mode_changes += 1
        if delay is not None:
            self.delay = delay
        if mode == "cut":
            self._open.clear()
            await self._close_listener()
            self._reset_all()
            return
        await self._listen()
        if mode == "blackhole":
            self._open.clear()
        else:
            self._open.set()

    def flap(self, schedule: list[tuple[str, float]]) -> None:
        """Cycle through (mode, seconds) steps until set_mode() is called."""
        self._cancel_flap()

        async def run() -> None:
            while True:
                for mode, seconds in schedule:
                    await self._apply(mode)
                    await asyncio.sleep(seconds)

        self._flapper = asyncio.create_task(run())

    def _cancel_flap(self) -> None:
        if self._flapper is not None:
            self._flapper.cancel()
            self._flapper = None

    def _reset_all(self) -> None:
        for a, b in list(self._pairs):
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()
        for w in list(self._held):
            w.transport.abort()
        self._held.clear()

    # -- forwarding ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":  # raced with the listener closing
            self.stats.refused_while_cut += 1
            writer.transport.abort()
            return
        self.stats.accepted += 1
        # In a black hole the agent's SYN is answered (by us) but nothing reaches the broker
        # until the hole closes: hold the new connection at the gate first.
        self._held.add(writer)
        await self._open.wait()
        if writer not in self._held:  # reset by a cut while held
            return
        self._held.discard(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()  # the broker is down: the agent sees the refusal
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer, "up")),
            asyncio.create_task(self._pump(up_reader, writer, "down")),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
            self._pairs.discard(pair)
            for w in pair:
                w.close()  # graceful: what was drained reaches the other side

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer, direction))
        try:
            while True:
                await self._open.wait()  # black hole: leave bytes in the kernel, unread
                data = await reader.read(65536)
                if not data:
                    break
                await self._open.wait()  # the hole may have opened while we were reading
                lag = self.delay if self.mode == "delay" else 0.0
                queue.put_nowait((time.monotonic() + lag, data))
            await queue.join()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, direction: str
    ) -> None:
        while True:
            due, data = await queue.get()
            try:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._open.wait()
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
            except (ConnectionError, OSError):
                return
            finally:
                queue.task_done()
