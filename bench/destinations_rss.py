"""Steady RSS of the daemon with MQTT alone, and with MQTT plus the provincial HTTPS destination.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/destinations_rss.py [--meters 100] [--seconds 40]

Both runs poll the same simulated meters (bench/poll_cpu_rss.py's farm) every second, seal
every 5 s and publish to a local Mosquitto. The second adds a province-https destination on
the HIL simulator (TLS on loopback with its own CA) and, after the warm-up, seals one manual
entry, so the token request (SM4 PIN block), the item registration and a record post have all
run: the HTTPS code is loaded and used, not just configured. Prints VmRSS (max over the
measured window, sampled every second) for each, and the difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.poll_cpu_rss import POINTS, meter_lines, proc_rss_mib, unit_environment  # noqa: E402

SECRET, PASSWORD = "Wk-0123456789abcdef-bench", "bench-pw"
ENTERPRISE = "91370600780790663W"


def config(tmp: Path, ports: list[int], broker: int, province: str) -> Path:
    lines = [f"""
[agent]
gateway = "bench"
enterprise = "{ENTERPRISE}"
data_dir = "{tmp / 'data'}"
log_level = "warning"
[platform]
host = "127.0.0.1"
port = {broker}
[signing]
key_file = "{tmp / 'k.pem'}"
[schedule]
poll_interval = 1
seal_interval = 5
heartbeat = 3600
{province}
"""]
    lines += meter_lines(ports)
    path = tmp / "agent.toml"
    path.write_text("".join(lines))
    return path


def run(tmp: Path, ports: list[int], seconds: float, warmup: float, with_province: bool) -> tuple[float, int]:
    """(max RSS MiB over the window, records the province received)."""
    from agent.protocol.signing import generate_key
    from hil.broker import Mosquitto
    from hil.province_sim import ProvinceSim

    tmp.mkdir(parents=True)
    generate_key(tmp / "k.pem")
    with Mosquitto() as broker, ProvinceSim(tmp / "sim", {ENTERPRISE: (SECRET, PASSWORD)}) as sim:
        province = ""
        if with_province:
            (tmp / "secret").write_text(SECRET)
            (tmp / "password").write_text(PASSWORD)
            assert sim.ca is not None
            province = (f'[[destination]]\nname = "province"\nkind = "province-https"\nurl = "{sim.url}"\n'
                        f'ca_file = "{sim.ca.ca_file}"\nsecret_key_file = "{tmp / "secret"}"\n'
                        f'password_file = "{tmp / "password"}"\n[[destination.item]]\n'
                        f'code = "00-00-0000-010104-10"\nstat_types = [2]\n')
        cfg = config(tmp, ports, broker.port, province)
        with open(tmp / "agent.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(cfg)], cwd=REPO,
                                    stderr=log, stdin=subprocess.DEVNULL, env=unit_environment())
        try:
            time.sleep(warmup)
            subprocess.run([sys.executable, "-m", "agent", "enter", "-c", str(cfg), "00-00-0000-010104-10",
                            "1140.10", "--unit", "t", "--period", "2026-11"], check=True, cwd=REPO,
                           capture_output=True)
            rss = []
            t0 = time.time()
            while time.time() < t0 + seconds:
                time.sleep(1)
                rss.append(proc_rss_mib(proc.pid))
        finally:
            proc.terminate()
            proc.wait(30)
        return max(rss), len(sim.records())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--warmup", type=float, default=15)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ports_file = tmp / "ports.json"
        farm = subprocess.Popen([sys.executable, str(REPO / "bench" / "poll_cpu_rss.py"), "--serve-meters",
                                 "--meters", str(a.meters), "--ports-file", str(ports_file)])
        try:
            while not ports_file.exists():
                time.sleep(0.1)
            ports = json.loads(ports_file.read_text())
            alone, _ = run(tmp / "mqtt", ports, a.seconds, a.warmup, False)
            both, records = run(tmp / "both", ports, a.seconds, a.warmup, True)
        finally:
            farm.terminate()
            farm.wait(10)
    print(f"meters {a.meters} x {POINTS} points, 1 s polls, sealing every 5 s, {a.seconds:g} s measured")
    print(f"RSS max, MQTT alone          : {alone:.1f} MiB  (target ≤ 45 MiB)")
    print(f"RSS max, MQTT + province-https: {both:.1f} MiB  (province got {records} record(s))")
    print(f"the HTTPS destination adds    : {both - alone:+.1f} MiB")


if __name__ == "__main__":
    main()
