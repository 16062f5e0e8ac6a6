"""Real parts for end-to-end tests: a Modbus TCP meter in a thread and the agent as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.protocol.signing import generate_key
from drivers.codec import encode
from hil.broker import free_port, port_open

ENTERPRISE = "91370600780790663W"
GATEWAY = "gw-test"
REPO = Path(__file__).resolve().parent.parent


class CountingMeter:
    """A Modbus TCP meter whose energy counter grows with time, so every sample is checkable.

    Holding registers: 0-1 import energy u32 ABCD, scale 0.01 kWh (raw = 100000 + 7 × seconds
    since start); 10-11 active power f32 CDAB (12.5 kW); 20 voltage u16 scale 0.1 (2301 → 230.1 V).
    """

    def __init__(self, unit: int = 1) -> None:
        self.port = free_port()
        self.unit = unit
        self.t0 = time.time()
        self.requests = 0
        self.last_request = 0.0  # when the last request arrived (time.time())
        self.refuse: set[int] = set()  # registers whose every read is refused (exception 2)
        self.stall_s = 0.0  # > 0: hold every reply this long (a wedged meter or gateway)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusTcpServer | None = None
        self._thread: threading.Thread | None = None

    def energy_raw(self, t: float) -> int:
        return 100_000 + int(7 * (t - self.t0))

    async def _action(self, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: Any) -> ExcCodes | None:
        self.requests += 1
        self.last_request = time.time()
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if any(address <= r < address + count for r in self.refuse):
            return ExcCodes.ILLEGAL_ADDRESS
        regs = encode(self.energy_raw(time.time()), "u32", "ABCD")
        registers[0 - start], registers[1 - start] = regs
        return None

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        device = SimDevice(self.unit, simdata=[
            # One contiguous block: like most real meters, gaps in the map are readable.
            SimData(0, count=21, values=[*encode(100_000, "u32", "ABCD"), *[0] * 8,
                                         *encode(12.5, "f32", "CDAB"), *[0] * 8, 2301],
                    datatype=DataType.REGISTERS),
        ], action=self._action)

        async def serve() -> None:
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            loop.call_soon(ready.set)
            await self._server.serve_forever()

        try:
            loop.run_until_complete(serve())
        except Exception:  # shutdown cancels serve_forever
            pass
        finally:
            loop.close()

    def start(self) -> CountingMeter:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)
        deadline = time.time() + 5
        while not port_open("127.0.0.1", self.port) and time.time() < deadline:
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> CountingMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


METER_POINTS = """
[[meter]]
name = "{name}"
bus = "{bus}"
unit = {unit}
[[meter.point]]
name = "import_active_energy"
register = 0
type = "u32"
scale = 0.01
unit = "kWh"
kind = "counter"
variety = "electricity"
[[meter.point]]
name = "active_power"
register = 10
type = "f32"
order = "CDAB"
unit = "kW"
[[meter.point]]
name = "voltage_a"
register = 20
type = "u16"
scale = 0.1
unit = "V"
"""


def write_site(tmp: Path, broker_port: int, meter_port: int, *, poll: float = 1.0, seal: float = 1.0,
               ack: str = "broker", extra: str = "", heartbeat: float = 3600, keepalive: int = 60) -> Path:
    """An agent config and signing key under tmp; returns the config path."""
    key = tmp / "signing.key"
    if not key.exists():
        generate_key(key)
    cfg = tmp / "agent.toml"
    cfg.write_text(f"""
[agent]
gateway = "{GATEWAY}"
enterprise = "{ENTERPRISE}"
data_dir = "{tmp / 'data'}"
log_level = "info"

[platform]
host = "127.0.0.1"
port = {broker_port}
ack = "{ack}"
ack_timeout = 3.0
reconnect_min = 0.2
reconnect_max = 1.0
keepalive = {keepalive}

[signing]
key_file = "{key}"

[schedule]
poll_interval = {poll}
seal_interval = {seal}
heartbeat = {heartbeat}

[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {meter_port}
timeout = 0.5
retries = 0
{METER_POINTS.format(name="main", bus="lan", unit=1)}
{extra}
""", encoding="utf-8")
    return cfg


class AgentProcess:
    """`python -m agent run` as a real child process, its log kept in a file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = env or {}
        self.log = config.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env.update(self.env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def public_key_of(key_file: Path) -> tuple[str, bytes]:
    from cryptography.hazmat.primitives import serialization

    from agent.protocol.signing import key_id_for

    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_id_for(raw), raw


def envelopes(messages: list[tuple[str, bytes]], type_: str | None = None) -> list[dict[str, Any]]:
    out = [json.loads(p) for _, p in messages]
    return [e for e in out if type_ is None or e["type"] == type_]


def status_json(cfg: Path) -> dict[str, Any] | None:
    """`energy-agent status --json`, or None while there is no readable store yet."""
    r = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(cfg), "--json"],
                       capture_output=True, text=True, timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 else None


def wait_until(cond: Any, timeout: float, step: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())
