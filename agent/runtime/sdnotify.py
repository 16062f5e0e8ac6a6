"""The sd_notify protocol, without libsystemd: one datagram per state change.

systemd (Type=notify) passes the path of a unix datagram socket in $NOTIFY_SOCKET; the service
sends newline-separated `KEY=value` assignments to it (READY=1, STATUS=…, WATCHDOG=1,
STOPPING=1). A path starting with `@` names a socket in the abstract namespace. Outside
systemd the variable is unset and every call is a cheap no-op, so the agent runs the same way
from a terminal, a test or a unit file.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "ready", "status", "stopping", "watchdog", "watchdog_interval"]


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@' (see sd_notify(3)).
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # vsock:… and relative paths are not used on our gateways; ignore rather than guess.
    return None


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=polling") to $NOTIFY_SOCKET.

    Returns True when the datagram was sent, False when not running under a notify-aware
    supervisor or the send failed. Never raises: a supervisor that went away must not take
    the agent down with it.
    """
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    addr = _address(raw)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), addr)
    except OSError:
        return False
    return True


def _one_line(text: str) -> str:
    # The protocol is newline-separated; a newline inside STATUS would start a bogus assignment.
    return " ".join(text.splitlines())


def ready(status_text: str | None = None) -> bool:
    """Tell systemd start-up is complete (Type=notify units leave 'activating' only then)."""
    msg = "READY=1"
    if status_text:
        msg += f"\nSTATUS={_one_line(status_text)}"
    return notify(msg)


def status(text: str) -> bool:
    """Set the one-line status shown by `systemctl status energy-agent`."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """Feed the watchdog (WatchdogSec=): systemd kills and restarts us if this stops."""
    return notify("WATCHDOG=1")


def stopping(status_text: str | None = None) -> bool:
    """Tell systemd a clean shutdown has begun, so it is not mistaken for a hang."""
    msg = "STOPPING=1"
    if status_text:
        msg += f"\nSTATUS={_one_line(status_text)}"
    return notify(msg)


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects WATCHDOG=1, or None when no watchdog is armed.

    Read from $WATCHDOG_USEC. If $WATCHDOG_PID is set and names another process (the variable
    leaked into a child), the watchdog is not ours to feed.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000
