"""A store filled the way a gateway fills it, for the web page's tests: two days and this
morning of history written as a meter would have produced it (with a 4-hour outage the day
before yesterday), then the real agent polling a real Modbus TCP meter into a real Mosquitto
for a while (sealing the past days, delivering, then a broker outage leaves a backlog), and a
meter that never answers. Afterwards `energy-agent serve` runs against it as a child process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.protocol.signing import generate_key
from buffer.names import MQTT
from buffer.store import Store
from drivers.base import Reading
from hil.broker import Mosquitto, free_port, port_open
from tests.agent_harness import ENTERPRISE, GATEWAY, REPO, AgentProcess, CountingMeter, wait_until

TZ = "Asia/Shanghai"
POLL_S = 5
ENERGY_CODE = "00-00-0000-020201-10"
POWER_CODE = "00-00-0000-020199-10"
KW_START = 500.0  # kWh on the counter at the first backfilled sample


def site_config(tmp: Path, broker_port: int, meter_port: int, dead_port: int, web_port: int,
                web_extra: str = "") -> Path:
    key = tmp / "signing.key"
    if not key.exists():
        generate_key(key)
    cfg = tmp / "agent.toml"
    cfg.write_text(f"""
[agent]
gateway = "{GATEWAY}"
enterprise = "{ENTERPRISE}"
timezone = "{TZ}"
data_dir = "{tmp / 'data'}"

[platform]
host = "127.0.0.1"
port = {broker_port}
reconnect_min = 0.2
reconnect_max = 1.0

[signing]
key_file = "{key}"

[schedule]
poll_interval = {POLL_S}
seal_interval = 1
heartbeat = 3600

[web]
port = {web_port}
{web_extra}

[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {meter_port}
timeout = 0.5
retries = 0

[[bus]]
name = "lan-2"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {dead_port}
timeout = 0.3
retries = 0
offline_after = 1

[[meter]]
name = "main"
bus = "lan"
unit = 1
[[meter.point]]
name = "import_active_energy"
register = 0
type = "u32"
scale = 0.01
unit = "kWh"
kind = "counter"
variety = "electricity"
code = "{ENERGY_CODE}"
[[meter.point]]
name = "active_power"
register = 10
type = "f32"
order = "CDAB"
unit = "kW"
code = "{POWER_CODE}"

[[meter]]
name = "boiler-house"
bus = "lan-2"
unit = 3
[[meter.point]]
name = "import_active_energy"
register = 0
type = "u32"
scale = 0.01
unit = "kWh"
kind = "counter"
variety = "electricity"
""", encoding="utf-8")
    return cfg


def load_kw(ts_ms: int) -> float:
    """A factory's day: low at night, two shifts, a lunch dip (kW)."""
    t = datetime.fromtimestamp(ts_ms / 1000).astimezone()  # shape only; any zone will do
    h = t.hour
    base = 40.0 if h < 7 or h >= 22 else 180.0
    return (base - (60.0 if h == 12 else 0.0) + 15.0 * ((ts_ms // 900_000) % 3)) * (1 + 0.12 * (t.day % 3))


def backfill(cfg_path: Path, until_ms: int) -> tuple[int, float]:
    """History from 00:00 two days ago to until_ms, every POLL_S, the counter integrating
    load_kw; 02:00-06:00 of the first day missing (an outage). Returns (start ms, last kWh)."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(TZ)
    today = datetime.fromtimestamp(until_ms / 1000, tz).date()
    first = today - timedelta(days=2)
    start = int(datetime(first.year, first.month, first.day, tzinfo=tz).timestamp() * 1000)
    outage = (start + 2 * 3_600_000, start + 6 * 3_600_000)
    store = Store(cfg_path.parent / "data" / "agent.db")
    kwh = KW_START
    batch: list[Reading] = []
    step = POLL_S * 1000
    try:
        for ts in range(start, until_ms, step):
            kw = load_kw(ts)
            kwh += kw * POLL_S / 3600
            if outage[0] <= ts < outage[1]:
                continue
            batch += [Reading("main", "import_active_energy", ts, round(kwh, 2)),
                      Reading("main", "active_power", ts, kw)]
            if len(batch) >= 4000:
                store.readings.add_readings(batch)
                batch = []
        if batch:
            store.readings.add_readings(batch)
    finally:
        store.close()
    return start, kwh


def local_today() -> date:
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo(TZ)).date()


@dataclass
class Site:
    tmp: Path
    config: Path
    web_port: int
    broker: Mosquitto
    meter: CountingMeter
    agent: AgentProcess
    serve: subprocess.Popen[bytes] | None = None

    @property
    def db(self) -> Path:
        return self.tmp / "data" / "agent.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start_serve(self) -> subprocess.Popen[bytes]:
        self.serve = start_serve(self.config, self.web_port, self.tmp / "serve.log")
        return self.serve

    def stop(self) -> None:
        if self.serve is not None:
            stop_process(self.serve)
        if self.agent.alive():
            self.agent.terminate()
        self.meter.stop()
        self.broker.stop()
        self.broker.cleanup()


def start_serve(config: Path, port: int, log: Path, wait: bool = True) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "-c", str(config)], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    if wait and not wait_until(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, 30):
        stop_process(proc)
        raise RuntimeError(f"serve did not listen: {log.read_text(errors='replace')[-2000:]}")
    if proc.poll() is not None and wait:
        raise RuntimeError(f"serve exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def build_site(tmp: Path, web_extra: str = "", agent_seconds: float = 20.0) -> Site:
    """History, then the real agent: seals the past days, delivers, then loses its broker."""
    broker = Mosquitto().start()
    meter = CountingMeter().start()
    web_port = free_port()
    cfg = site_config(tmp, broker.port, meter.port, free_port(), web_port, web_extra)
    _, kwh = backfill(cfg, int(time.time() * 1000) - 60_000)
    # The live meter carries on from where the history ends (its counter grows 0.07 kWh/s).
    meter.t0 = time.time() - (round(kwh * 100) + 100 - 100_000) / 7
    agent = AgentProcess(cfg).start()
    site = Site(tmp, cfg, web_port, broker, meter, agent)
    yesterday = (local_today() - timedelta(days=1)).isoformat()

    def sealed_yesterday() -> bool:
        if not site.db.exists():
            return False
        s = Store(site.db, readonly=True)
        try:
            return bool(s.outbox.envelopes("daily", yesterday, yesterday)) and s.outbox.backlog(MQTT)[0] == 0
        finally:
            s.close()

    try:
        if not wait_until(sealed_yesterday, 120, 0.5):
            raise RuntimeError("the agent did not seal and deliver yesterday: " + agent.log_text()[-3000:])
        time.sleep(agent_seconds)
        broker.stop()  # an outage: what the agent seals from now on stays in the backlog
        time.sleep(4)
        agent.terminate()
    except BaseException:
        site.stop()
        raise
    return site


def json_get(url: str, cookie: str | None = None, auth: str | None = None) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url)
    if cookie:
        req.add_header("Cookie", cookie)
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()
