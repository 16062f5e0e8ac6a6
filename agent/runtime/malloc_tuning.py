"""Keep asyncio's socket receive buffers out of mmap (glibc only).

asyncio reads a socket with `sock.recv(256 KiB)`: CPython allocates the whole 256 KiB, the
kernel fills ~60 bytes of it (a Modbus TCP reply), and CPython shrinks the bytes object to
that. glibc serves every block at or above its mmap threshold (128 KiB by default) with a
mapping of its own, so each reply cost an mmap, a page fault, an mremap and, when the reply
was freed, a munmap — about a quarter of the event loop's CPU polling 100 TCP meters once a
second (bench/README.md). With the threshold above 256 KiB the buffer comes from the heap and
shrinks in place; the trim threshold keeps glibc from handing the top of the heap back to the
kernel after every reply, only to ask for it again on the next.

Both are glibc's own settings (`mallopt`, the same as MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ in the environment). Set in code so the daemon behaves the same
however it is started (systemd unit, a shell, the HIL rig). Memory freed below the trim
threshold stays with the process; only pages that were touched count towards its RSS, and
the receive buffers touch one page each.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("agent.malloc")

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
# Above asyncio's 256 KiB read size (selector_events.max_size) with room to spare.
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 * 1024


def keep_small_buffers_off_mmap() -> bool:
    """Raise glibc's mmap and trim thresholds; False where the C library is not glibc."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError):  # not glibc (musl has no such name)
        return False
    libc = ctypes.CDLL(None)
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:  # never expected with glibc; the daemon works either way, only costs more CPU
        log.warning("mallopt refused the mmap/trim thresholds; socket reads keep using mmap")
    return ok
