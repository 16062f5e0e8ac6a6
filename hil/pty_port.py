"""The meters' end of a pty pair, as the simulated lines (Modbus RTU, DL/T 645, CJ/T 188) use it:
opened raw and non-blocking, read by the event loop, answered by a task of the line's own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import tty
from abc import ABC, abstractmethod
from typing import Self

log = logging.getLogger(__name__)


class PtyPort(ABC):
    label = "line"  # for log lines: "rtu line /dev/pts/3: …"

    def __init__(self, device: str) -> None:
        self.device = device
        self._fd = -1
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        self._fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd, termios.TCSANOW)
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        self._task = asyncio.create_task(self._answer_loop())
        return self

    async def stop(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _read(self) -> bytes:
        """What arrived; b"" when nothing did or the other side closed (EIO on a pty: it may
        come back)."""
        try:
            return os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError, OSError):
            return b""

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, data)
        except BlockingIOError:
            log.warning("%s %s: output full, reply dropped", self.label, self.device)
        except OSError as e:
            log.warning("%s %s: write failed: %s", self.label, self.device, e)

    @abstractmethod
    def _on_readable(self) -> None: ...

    @abstractmethod
    async def _answer_loop(self) -> None: ...
