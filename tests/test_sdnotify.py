"""sd_notify against a real unix datagram socket: the test plays systemd's side."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import sdnotify


@pytest.fixture
def systemd_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory of our own: pytest's tmp_path can exceed the 108-byte sun_path limit.
    d = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(d)


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_unset_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False
    assert sdnotify.watchdog() is False


def test_messages_arrive(systemd_socket: socket.socket) -> None:
    assert sdnotify.ready("polling 3 buses") is True
    assert recv(systemd_socket) == "READY=1\nSTATUS=polling 3 buses"
    assert sdnotify.status("backlog 12") is True
    assert recv(systemd_socket) == "STATUS=backlog 12"
    assert sdnotify.watchdog() is True
    assert recv(systemd_socket) == "WATCHDOG=1"
    assert sdnotify.stopping() is True
    assert recv(systemd_socket) == "STOPPING=1"


def test_status_newlines_cannot_inject_assignments(systemd_socket: socket.socket) -> None:
    sdnotify.status("bad\nREADY=1")
    assert recv(systemd_socket) == "STATUS=bad READY=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"energy-agent-test-{os.getpid()}-{id(monkeypatch)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert sdnotify.ready() is True
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_vanished_supervisor_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    d = tempfile.mkdtemp(prefix="sdn-")
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(d, "gone"))
    try:
        assert sdnotify.watchdog() is False
    finally:
        os.rmdir(d)


def test_relative_path_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify")
    assert sdnotify.notify("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert sdnotify.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 60.0
    # Inherited by a child: the watchdog belongs to another process.
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "sixty"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


def test_from_a_real_child_process(systemd_socket: socket.socket) -> None:
    # The way systemd really uses it: a separate process inherits NOTIFY_SOCKET.
    repo = Path(__file__).resolve().parent.parent
    code = "from agent.runtime import sdnotify; import sys; sys.exit(0 if sdnotify.ready('up') else 1)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=dict(os.environ), timeout=30, check=False
    )
    assert proc.returncode == 0
    assert recv(systemd_socket) == "READY=1\nSTATUS=up"
