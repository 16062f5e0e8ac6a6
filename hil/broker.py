"""A real Mosquitto for tests and the HIL rig, plus a small subscriber that records messages.

`Mosquitto` runs `mosquitto -c FILE` as a child with a config of its own in a temp dir, on a
free 127.0.0.1 port (never a fixed one: other runs may hold it). `stop()` then `restart()`
brings it back on the SAME port, which is how a broker outage is simulated; `pause()` /
`resume()` (SIGSTOP/SIGCONT) black-hole it while sockets stay open.

    with Mosquitto() as broker, Subscriber(broker.port, "energy/#") as sub:
        ...publish...
        sub.wait_for(1)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A second listener speaking TLS; with require_certificate the client needs a cert."""

    cafile: str
    certfile: str
    keyfile: str
    require_certificate: bool = True
    port: int = 0  # 0: pick a free port


class Mosquitto:
    """A Mosquitto child process on 127.0.0.1; a context manager, or start()/stop()/restart()."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        tls: TlsListener | None = None,
        persistence: bool = False,
        extra_config: str = "",
        binary: str = MOSQUITTO,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.tls_port = (tls.port or free_port(host)) if tls else None
        # With persistence, clean_session=False subscribers keep their subscriptions and
        # queued QoS 1 messages across stop()/restart() (mosquitto saves on SIGTERM).
        self.persistence = persistence
        self.extra_config = extra_config
        self.binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.config_file = self._dir / "mosquitto.conf"
        self.log_file = self._dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def write_config(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to user "mosquitto", which cannot read a 0700 pytest
            # tmp dir (certificates) or write its persistence file into ours.
            lines.append("user root")
        if self.persistence:
            # Save after every change, so even stop(kill=True) keeps sessions and queues.
            lines += [
                f"persistence_location {self._dir}/",
                "autosave_interval 1",
                "autosave_on_changes true",
            ]
        if self.tls and self.tls_port:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls.cafile}",
                f"certfile {self.tls.certfile}",
                f"keyfile {self.tls.keyfile}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return self.config_file

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.running:
            return self
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.host}:{self.port} already in use")
        self.write_config()
        log = open(self.log_file, "ab")  # noqa: SIM115 - lives as long as the child
        self._log_fh = log
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        while not all(port_open(self.host, p) for p in ports):
            if self._proc.poll() is not None:
                # The port may be in use by someone else or the config is wrong: say which.
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"mosquitto exited with {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"mosquitto not listening on {ports} after {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop the child by its pid: SIGTERM (saves persistence), or SIGKILL with kill=True."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if kill:
                    # Even a paused broker dies at once, without handling what is buffered.
                    os.kill(proc.pid, signal.SIGKILL)
                else:
                    os.kill(proc.pid, signal.SIGCONT)  # a paused broker cannot act on SIGTERM
                    os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def restart(self, down_for: float = 0.0, kill: bool = False) -> None:
        """Stop, stay down for `down_for` seconds, start again on the same port(s)."""
        self.stop(kill=kill)
        if down_for:
            time.sleep(down_for)
        self.start()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): TCP stays up, nothing is answered — a black hole."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


class Subscriber:
    """A paho client in its own thread recording every (topic, payload) it gets at QoS 1.

    Subscriptions are renewed on every connect, and the session is persistent
    (clean_session=False) so a broker started with persistence=True keeps queueing for it
    while it reconnects after a restart.
    """

    def __init__(
        self,
        port: int,
        *topics: str,
        host: str = "127.0.0.1",
        client_id: str | None = None,
        clean_session: bool = False,
        tls: tuple[str, str, str] | None = None,  # (ca, cert, key)
        tls_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = tls_port if tls else port
        self.topics = topics or ("#",)
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.subacks = 0  # SUBACKs so far: one per (re)connect
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{uuid.uuid4().hex[:8]}",
            clean_session=clean_session,
        )
        if tls:
            ca, cert, key = tls
            self.client.tls_set(ca, cert, key, cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if not getattr(rc, "is_failure", False):
            client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _c: object, _u: object, _mid: int, _rc: object, _p: object) -> None:
        with self._cond:
            self.subacks += 1
            self._cond.notify_all()

    def wait_subscribed(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until `count` SUBACKs arrived (e.g. subacks + 1 after a broker restart)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.subacks >= count, timeout)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def start(self, timeout: float = 5.0) -> Subscriber:
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self.wait_subscribed(1, timeout):
            self.stop()
            raise TimeoutError(f"subscriber not subscribed on {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Wait until at least n messages arrived; return a copy of all of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"got {len(self.messages)} of {n} messages in {timeout} s")
                self._cond.wait(left)
            return list(self.messages)

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._cond:
            return list(self.messages)

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
