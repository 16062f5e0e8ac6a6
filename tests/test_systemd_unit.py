"""The shipped unit file: it parses cleanly, its hardening scores ≤ 2.0, and what it forbids
(writable+executable memory) does not break the agent's dependencies.

`systemd-analyze` comes from Debian/Ubuntu's `systemd` package (apt-get install -y systemd);
it works on unit files without systemd running as PID 1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "energy-agent.service"
MAX_EXPOSURE = 2.0
EXEC_START = "ExecStart=/opt/energy-agent/venv/bin/energy-agent run -c /etc/energy-agent/agent.toml"
WEB_UNIT = REPO / "systemd" / "energy-agent-web.service"
WEB_EXEC_START = "ExecStart=/opt/energy-agent/venv/bin/energy-agent serve -c /etc/energy-agent/agent.toml"
UNITS = [pytest.param(UNIT, EXEC_START, id="daemon"), pytest.param(WEB_UNIT, WEB_EXEC_START, id="web")]

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    analyze is None, reason="systemd-analyze not installed (apt-get install -y systemd)"
)


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_the_contract_the_agent_relies_on() -> None:
    s = unit_settings()
    assert EXEC_START in UNIT.read_text().splitlines()
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "60", "Restart": "always",
        "RestartSec": "5", "TimeoutStopSec": "30", "User": "energy-agent",
        "Group": "energy-agent", "SupplementaryGroups": "dialout",
        "StateDirectory": "energy-agent", "ConfigurationDirectory": "energy-agent",
        "PrivateDevices": "no", "DevicePolicy": "closed", "UMask": "0077",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    for tty in ("ttyS", "ttyUSB", "ttyAMA"):
        assert f"char-{tty} rw" in s["DeviceAllow"]


def test_web_unit_mirrors_the_daemons_sandbox_without_its_devices() -> None:
    web, daemon = unit_settings(WEB_UNIT), unit_settings(UNIT)
    assert WEB_EXEC_START in WEB_UNIT.read_text().splitlines()
    # Every hardening line of the daemon's unit is in the page's, with the same value, except
    # what only the poller needs (serial ports, sd_notify, the watchdog) and the descriptions.
    only_daemon = {"Description", "Documentation", "Wants", "After", "Type", "NotifyAccess", "WatchdogSec",
                   "Restart", "TimeoutStartSec", "TimeoutStopSec",
                   "SupplementaryGroups", "PrivateDevices", "DeviceAllow", "ExecStart", "RestartSec"}
    for key, values in daemon.items():
        if key not in only_daemon:
            assert web.get(key) == values, key
    assert web["PrivateDevices"] == ["yes"] and "DeviceAllow" not in web
    assert "SupplementaryGroups" not in web  # no dialout: it never opens a serial port
    assert web["RestartPreventExitStatus"] == ["78"]
    assert web["CPUWeight"] == ["50"] and web["MemoryMax"] == ["200M"]  # the poller comes first


@needs_analyze
@pytest.mark.parametrize(("unit_file", "exec_start"), UNITS)
def test_systemd_analyze_verify_is_clean(tmp_path: Path, unit_file: Path, exec_start: str) -> None:
    # verify insists that ExecStart's binary exists; the venv only exists after install.sh.
    # So verify a copy whose only difference is ExecStart pointing at /bin/true (same
    # arguments); every other line, including the sandboxing, is checked as shipped.
    text = unit_file.read_text()
    copy = text.replace(exec_start, exec_start.replace(
        "/opt/energy-agent/venv/bin/energy-agent", "/bin/true"))
    assert copy != text
    unit = tmp_path / unit_file.name
    unit.write_text(copy)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    # verify exits 0 even for lines it ignores ("Invalid device rights …, ignoring"), so any
    # output at all is a failure.
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""


@needs_analyze
def test_verify_catches_a_broken_line(tmp_path: Path) -> None:
    # The check above must be able to fail: a typo in a sandboxing line is reported.
    broken = UNIT.read_text().replace(EXEC_START, "ExecStart=/bin/true").replace(
        "DeviceAllow=char-ttyS rw", "DeviceAllow=char-ttyS rwq")
    unit = tmp_path / "energy-agent.service"
    unit.write_text(broken)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert "rwq" in proc.stdout + proc.stderr


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "SYSTEMD_COLORS": "0"},
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


@needs_analyze
@pytest.mark.parametrize("unit_file", [UNIT, WEB_UNIT], ids=["daemon", "web"])
def test_hardening_exposure_at_most_2(unit_file: Path) -> None:
    score = exposure(unit_file)
    print(f"systemd-analyze security --offline=yes: exposure {score}")
    assert score <= MAX_EXPOSURE


@needs_analyze
def test_exposure_parser_sees_a_weak_unit(tmp_path: Path) -> None:
    weak = tmp_path / "weak.service"
    weak.write_text("[Service]\nExecStart=/bin/true\n")
    assert exposure(weak) > MAX_EXPOSURE


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+)
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("W+X mapping still allowed: the probe proves nothing")
    except OSError:
        pass
    import asyncio, sqlite3, ssl
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    k = Ed25519PrivateKey.generate()
    k.public_key().verify(k.sign(b"x"), b"x")
    import msgspec, paho.mqtt.client as mqtt, serial, apscheduler, sqlite_utils
    from pymodbus.client import AsyncModbusTcpClient
    mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x")
    async def modbus():
        client = AsyncModbusTcpClient("127.0.0.1", port=1, timeout=0.2, retries=0)
        await client.connect()  # refused: the event loop, selector and transport code ran
        client.close()
    asyncio.run(modbus())
    db = sqlite3.connect(":memory:")
    db.execute("create table t (x)")
    db.executemany("insert into t values (?)", [(i,) for i in range(100)])
    ssl.create_default_context()
    port = serial.serial_for_url("loop://", timeout=0.1)
    port.write(b"ab")
    assert port.read(2) == b"ab"
    cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)  # libffi closure
    assert cb(1) == 2
    import agent.runtime.sdnotify, agent.runtime.watchdog, agent.config
    from agent.runtime.malloc_tuning import keep_small_buffers_off_mmap
    assert keep_small_buffers_off_mmap()
    from agent.protocol.signing import Ed25519Signer  # the daemon signs through PyNaCl (libsodium)
    Ed25519Signer(bytes(range(32))).sign(b"x")
    # energy-agent serve (its own unit has the same MemoryDenyWriteExecute=yes): the ASGI
    # stack, a request through it, scrypt, and an .xlsx export.
    import hashlib, http.client, io, socket, threading, time, uvicorn, xlsxwriter
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    s = socket.socket(); s.bind(("127.0.0.1", 0)); web_port = s.getsockname()[1]; s.close()
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("web ok"))])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=web_port, loop="asyncio",
                                           http="h11", lifespan="off", log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True); thread.start()
    while not server.started: time.sleep(0.02)
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10); conn.request("GET", "/")
    assert conn.getresponse().read() == b"web ok"
    server.should_exit = True; thread.join(10)
    hashlib.scrypt(b"pw", salt=b"salt", n=2**14, r=8, p=1, maxmem=1 << 26)
    wb = xlsxwriter.Workbook(io.BytesIO(), {"in_memory": True}); wb.add_worksheet().write(0, 0, "x"); wb.close()
    import agent.web.app, agent.web.routes
    print("ok")
    """
)


def test_dependencies_work_without_writable_executable_memory() -> None:
    # MemoryDenyWriteExecute=yes refuses W+X mappings. The kernel's own PR_SET_MDWE (which
    # newer systemd uses for the same setting) applies the same rule to one process, so run
    # the agent's imports and hot calls under it.
    proc = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], cwd=REPO, capture_output=True, text=True,
        timeout=60, check=False,
    )
    if proc.returncode == 77:
        pytest.skip("kernel lacks PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


UNIT_ENV_PROBE = textwrap.dedent(
    """
    import sys, traceback
    import agent.runtime.app, agent.accounting.reports, drivers.modbus_tcp, drivers.modbus_rtu
    def f():
        return 1 / 0
    try:
        f()
    except ZeroDivisionError:
        text = traceback.format_exc()
    assert "line 5, in f" in text and "ZeroDivisionError" in text, text
    # Column offsets are what PYTHONNODEBUGRANGES leaves out of every code object.
    print(sorted({col for *_, col in f.__code__.co_positions()}, key=str))
    """
)


def test_the_agent_imports_and_tracebacks_work_under_the_units_environment() -> None:
    env = {"PATH": os.environ.get("PATH", "")}
    for assignment in unit_settings().get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = value
    proc = subprocess.run(
        [sys.executable, "-c", UNIT_ENV_PROBE], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[None]"  # no column tables: issue 2, RSS
