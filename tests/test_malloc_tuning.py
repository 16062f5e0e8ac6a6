"""agent/runtime/malloc_tuning.py: after it, a socket read's 256 KiB buffer no longer gets a mapping
of its own from glibc (each one was an mmap, a page fault, an mremap and a munmap)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import ctypes, socket
from agent.runtime.malloc_tuning import keep_small_buffers_off_mmap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
a, b = socket.socketpair()
kept = []

def mapped_by_a_read():
    # What asyncio does with every reply: recv(256 KiB), shrunk to the bytes that came.
    before = libc.mallinfo2().hblks
    a.send(b"x" * 60)
    kept.append(b.recv(256 * 1024))
    return libc.mallinfo2().hblks - before

print(mapped_by_a_read(), keep_small_buffers_off_mmap(), mapped_by_a_read(), mapped_by_a_read())
"""


@pytest.mark.skipif(not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
                    reason="glibc only")
def test_a_socket_read_buffer_comes_from_the_heap_once_tuned() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.split() == ["1", "True", "0", "0"]
