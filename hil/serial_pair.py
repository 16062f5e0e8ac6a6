"""A virtual null-modem cable: two linked pseudo-terminals made by socat.

    with serial_pair() as (meter_side, agent_side):
        ...  # a simulated meter on one end, the driver on the other

Ptys ignore the baud rate and reject even/odd parity (use parity N on them); a simulated
meter that must behave like a real 9600-baud line adds the frame time itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

_PTY_LINE = re.compile(rb"PTY is (\S+)")


class SerialPairError(RuntimeError):
    """socat is missing or did not produce two ptys."""


@contextmanager
def serial_pair(timeout: float = 5.0) -> Iterator[tuple[str, str]]:
    """Start socat, yield the two linked pty paths, stop socat on exit."""
    socat = shutil.which("socat")
    if socat is None:
        raise SerialPairError("socat not found: install it (apt-get install socat)")
    proc = subprocess.Popen(
        [socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        paths = _read_paths(proc, timeout)
        yield paths[0], paths[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _read_paths(proc: subprocess.Popen[bytes], timeout: float) -> list[str]:
    """Read socat's stderr until both `PTY is /dev/pts/N` lines and the ready line appeared."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    text = b""
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            chunk = None
        if chunk:
            text += chunk
        elif chunk == b"" or proc.poll() is not None:
            break
        paths = [p.decode() for p in _PTY_LINE.findall(text)]
        # "starting data transfer loop" means socat has both ends open and is relaying.
        if len(paths) == 2 and b"starting data transfer loop" in text:
            return paths
        if chunk is None:
            time.sleep(0.01)
    raise SerialPairError(
        f"socat did not report two ptys within {timeout} s: {text.decode(errors='replace')!r}"
    )
