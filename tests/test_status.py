"""`energy-agent status` beside a running daemon: read-only, per-meter health, backlog, warnings."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hil.broker import Mosquitto
from tests.agent_harness import AgentProcess, CountingMeter, status_json, wait_until, write_site


def status(cfg: Path) -> dict:  # type: ignore[type-arg]
    s = status_json(cfg)
    assert s is not None, "status failed"
    return s


def gone_state(cfg: Path) -> str | None:
    """The dead meter's state, or None while the agent is still creating its store."""
    s = status_json(cfg)
    if s is None:
        return None
    return next((m["state"] for m in s["meters"] if m["meter"] == "gone"), None)


def test_status_beside_a_running_agent(tmp_path: Path) -> None:
    with Mosquitto() as broker, CountingMeter() as meter:
        cfg = write_site(tmp_path, broker.port, meter.port, extra="""
[[bus]]
name = "dead"
kind = "modbus-tcp"
host = "127.0.0.1"
port = 9
timeout = 0.2
retries = 0
offline_after = 2
[[meter]]
name = "gone"
bus = "dead"
unit = 1
[[meter.point]]
name = "import_active_energy"
register = 0
type = "u32"
kind = "counter"
variety = "electricity"
code = "00-00-0000-020201-10"
""")
        agent = AgentProcess(cfg).start()
        try:
            assert wait_until(lambda: (tmp_path / "data" / "agent.db").exists(), 20)
            assert wait_until(lambda: gone_state(cfg) == "offline", 30), agent.log_text()
            s = status(cfg)  # while the daemon writes
            assert agent.alive()
        finally:
            assert agent.terminate() == 0, agent.log_text()
    meters = {m["meter"]: m for m in s["meters"]}
    assert meters["main"]["state"] == "online"
    assert s["now_ms"] - meters["main"]["last_good_ms"] < 10_000
    assert meters["gone"]["state"] == "offline"
    assert "cannot connect" in meters["gone"]["last_error"]
    assert meters["gone"]["completeness_today"] == 0.0
    assert any(w.startswith("meter gone: offline") for w in s["warnings"])
    assert any(w.startswith("meter gone: completeness today 0% < 90 %") for w in s["warnings"])
    assert s["next_seq"] > 1
    # The human form names the same things.
    r = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert "warning: meter gone: offline" in r.stdout
    assert "backlog:" in r.stdout and "last delivered:" in r.stdout


def test_status_last_good_read_is_current_while_the_daemon_runs(tmp_path: Path) -> None:
    """Within one poll interval of the meter's real last read while the agent runs, and the
    very last read once it has stopped (health saved at shutdown)."""
    poll_ms = 2000
    with Mosquitto() as broker, CountingMeter() as meter:
        # A point the meter refuses, merged into the same request as the others: found by
        # splitting, shown by status, and the meter's other points stay GOOD.
        meter.refuse = {22}
        cfg = write_site(tmp_path, broker.port, meter.port, poll=poll_ms / 1000, extra="""
[[meter.point]]
name = "frequency"
register = 22
unit = "Hz"
""")
        agent = AgentProcess(cfg).start()
        try:
            assert wait_until(lambda: meter.requests >= 3 and status_json(cfg) is not None, 30), agent.log_text()
            for _ in range(3):
                real = meter.last_request * 1000
                s = status(cfg)
                last_good = next(m["last_good_ms"] for m in s["meters"] if m["meter"] == "main")
                assert real - poll_ms <= last_good <= s["now_ms"], (real, last_good)
                # The first day counts from the first poll, and says so.
                assert s["completeness_since_ms"] is not None
                time.sleep(1.3)
        finally:
            assert agent.terminate() == 0, agent.log_text()
        real = meter.last_request * 1000
    s = status(cfg)
    main = next(m for m in s["meters"] if m["meter"] == "main")
    assert abs(real - main["last_good_ms"]) < 200, (real, main["last_good_ms"])
    assert main["state"] == "online"
    assert main["read_plan"] == [
        "holding 0..11 (12 registers, 2 points)", "holding 20..20 (1 registers, 1 points)",
        "refused frequency: exception 2 (illegal data address) reading holding 22..22 — check "
        "the register map (profile) and the function (holding/input)"]
    text = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60).stdout
    assert "meter main refuses some of its points; read as:" in text
    assert "refused frequency: exception 2" in text
    found = [line for line in agent.log_text().splitlines() if "frequency" in line]
    assert len(found) == 1 and "1 point(s) failing, the others are read" in found[0], found


def test_status_without_a_store_says_so(tmp_path: Path) -> None:
    cfg = write_site(tmp_path, 1883, 502)
    r = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "no store at" in r.stdout
