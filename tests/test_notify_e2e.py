"""The real agent speaking sd_notify to a socket that plays systemd's part.

READY=1 comes after the first committed poll; WATCHDOG=1 keeps coming while every bus task
completes its cycles, and stops when one is wedged (a meter that holds its reply far longer
than the watchdog allows), so systemd would restart the agent.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from hil.broker import Mosquitto
from tests.agent_harness import AgentProcess, CountingMeter, write_site


class FakeSystemd:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.extend((time.time(), line) for line in data.decode().splitlines())

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in self.messages if m.startswith(prefix)]


def test_ready_after_first_poll_and_watchdog_stops_when_a_bus_is_wedged(tmp_path: Path) -> None:
    systemd = FakeSystemd(tmp_path / "notify.sock")
    with Mosquitto() as broker, CountingMeter() as meter, CountingMeter() as slow_meter:
        cfg = write_site(tmp_path, broker.port, meter.port, extra=f"""
[[bus]]
name = "slow"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {slow_meter.port}
timeout = 20.0
retries = 0
[[meter]]
name = "slow-meter"
bus = "slow"
unit = 1
[[meter.point]]
name = "voltage_a"
register = 20
type = "u16"
""")
        agent = AgentProcess(cfg, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                       "WATCHDOG_USEC": "1000000"}).start()
        try:
            systemd.drain(6)
            ready = systemd.times("READY=1")
            assert len(ready) == 1, (systemd.messages, agent.log_text())
            assert (tmp_path / "data" / "agent.db").exists()
            fed = systemd.times("WATCHDOG=1")
            assert len([t for t in fed if t > ready[0]]) >= 5, systemd.messages  # every W/2 = 0.5 s
            slow_meter.stall_s = 30.0  # its next reply comes 30 s late: the bus task is stuck
            wedged_at = time.time()
            systemd.drain(6)
            last_feed = max(systemd.times("WATCHDOG=1"))
            # Allowed lateness is max(2 × poll 1 s, 2 × watchdog 1 s) = 2 s after its last cycle.
            assert last_feed < wedged_at + 3.5, (last_feed - wedged_at, agent.log_text())
            assert time.time() - last_feed > 2.0
            assert agent.alive()
            assert "slow" in agent.log_text()  # the log names the wedged bus
        finally:
            slow_meter.stall_s = 0.0
            agent.kill()
