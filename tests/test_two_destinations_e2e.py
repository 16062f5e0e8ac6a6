"""The daemon itself with two destinations: `python -m agent run` with the old [platform]
section (the mqtt destination "mqtt") plus a province-https destination on the simulator.
A manual entry sealed beside the running daemon reaches both; the provincial platform going
away does not stop MQTT; `status` and the heartbeat show each destination."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hil.broker import Mosquitto, Subscriber
from hil.province_sim import ProvinceSim
from tests.agent_harness import (
    ENTERPRISE,
    GATEWAY,
    AgentProcess,
    CountingMeter,
    envelopes,
    status_json,
    wait_until,
    write_site,
)

SECRET, PASSWORD = "Wk-0123456789abcdef-e2e", "e2e-pw"
COAL = "00-00-0000-010104-10"


def province(tmp: Path, sim: ProvinceSim) -> str:
    (tmp / "secret").write_text(SECRET)
    (tmp / "password").write_text(PASSWORD)
    assert sim.ca is not None
    return f"""
[[destination]]
name = "province"
kind = "province-https"
url = "{sim.url}"
ca_file = "{sim.ca.ca_file}"
secret_key_file = "{tmp / 'secret'}"
password_file = "{tmp / 'password'}"
timeout = 2.0
backoff_min = 0.2
backoff_max = 1.0

[[destination.item]]
code = "{COAL}"
name = "raw coal received"
stat_types = [2]
"""


def enter(cfg: Path, value: str, month: str) -> None:
    subprocess.run([sys.executable, "-m", "agent", "enter", "-c", str(cfg), COAL, value,
                    "--unit", "t", "--period", month, "--variety", "raw_coal"],
                   check=True, capture_output=True, timeout=60)


def test_daemon_delivers_to_both_and_one_outage_does_not_stop_the_other(tmp_path: Path) -> None:
    with Mosquitto() as broker, CountingMeter() as meter, \
            ProvinceSim(tmp_path / "sim", {ENTERPRISE: (SECRET, PASSWORD)}) as sim:
        sub = Subscriber(broker.port, f"energy/{ENTERPRISE}/{GATEWAY}/up/#").start()
        cfg = write_site(tmp_path, broker.port, meter.port, heartbeat=2.0,
                         extra=province(tmp_path, sim))
        agent = AgentProcess(cfg).start()
        try:
            assert wait_until(lambda: envelopes(sub.snapshot(), "readings"), 30), agent.log_text()
            enter(cfg, "1140.10", "2026-11")
            assert wait_until(lambda: len(sim.records()) == 1, 20), agent.log_text()
            assert wait_until(lambda: envelopes(sub.snapshot(), "manual"), 10)
            (rec,) = sim.records()
            assert rec == (COAL, 2, 5, "2026-11-01 00:00:00", "1140.10", 1)
            # The province goes away; MQTT keeps taking the daemon's envelopes.
            sim.down = True
            enter(cfg, "1200.00", "2026-10")
            n = len(sub.snapshot())
            assert wait_until(lambda: len(envelopes(sub.snapshot(), "manual")) == 2, 10)
            assert wait_until(lambda: len(sub.snapshot()) > n + 3, 10)
            s = status_json(cfg)
            assert s is not None
            d = {x["name"]: x for x in s["destinations"]}
            assert d["province"]["pending"] >= 1 and d["mqtt"]["pending"] <= 5
            assert d["province"]["kind"] == "province-https"
            assert wait_until(lambda: "503" in str((status_json(cfg) or {}).get("destinations")), 15)
            sim.down = False
            assert wait_until(lambda: len(sim.records()) == 2, 20), agent.log_text()
            human = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(cfg)],
                                   capture_output=True, text=True, timeout=60).stdout
            assert "destination mqtt (mqtt, 127.0.0.1:" in human
            assert f"destination province (province-https, {sim.url}): backlog " in human
        finally:
            assert agent.terminate() == 0, agent.log_text()
            sub.stop()
    heartbeat = envelopes(sub.snapshot(), "status")[-1]["body"]
    assert set(heartbeat["uplink"]) == {"mqtt", "province"}
    assert set(heartbeat["backlog"]) == {"mqtt", "province"}
    assert sim.counters.duplicates == 0 and sim.counters.pin_failures == 0
    log = (tmp_path / "agent.log").read_text()
    assert "destination province: forwarding paused" in log and "destination province: forwarding resumed" in log
    assert d["province"]["rejected"] == 0
