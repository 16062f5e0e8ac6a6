"""Run one HIL scenario end to end: a simulated site, a real broker, the real agent, faults.

    python -m hil run hil/scenarios/broker-outage.toml [--short]

`Rig` starts Mosquitto, the fault proxy in front of it (the agent always connects through
it), the platform simulator, the simulated meters (Modbus TCP servers; RTU slaves on socat
pty pairs), writes an agent config and key, and runs `python -m agent run -c CONFIG` as a
real subprocess. `run_scenario` plays the scenario's timeline of faults, then restores
everything, lets the backlog drain, stops the agent and returns the loss report.
The scenario file format is described in docs/hil.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from drivers.model import PointConfig
from hil.broker import Mosquitto
from hil.fault_proxy import FaultProxy
from hil.observer import Observer
from hil.platform_sim import PlatformSim, key_id
from hil.report import (
    Report,
    build_report,
    dropped_samples,
    judge,
    reported_drops,
)
from hil.serial_pair import serial_pair
from hil.sim_di import DiLine, di_meter
from hil.sim_meter import ModbusTcpServer, SimMeter
from hil.sim_rtu import RtuLine

log = logging.getLogger("hil")
ROOT = Path(__file__).resolve().parent.parent
ENTERPRISE, GATEWAY = "91370600780790663W", "hil-gw"
# Ends of faults: the report measures how long the backlog takes to drain after each.
RESTORES = {"broker.start", "platform.back", "platform.ack"}  # the proxy records its own
# Starts and ends of fault windows (for the agent's CPU and coverage while under a fault).
FAULT_STARTS = {"broker.stop", "proxy.cut", "proxy.blackhole", "proxy.delay", "proxy.flap",
                "platform.away", "platform.noack"}
FAULT_ENDS = RESTORES | {"proxy.pass"}


@dataclass
class Scenario:
    name: str
    description: str
    duration: float
    config: dict[str, Any]  # merged into the generated agent config
    lines: list[dict[str, Any]]
    meters: list[dict[str, Any]]
    events: list[dict[str, Any]]  # {"at": seconds, "do": action, ...}
    kill_loop: dict[str, Any] | None
    expect: dict[str, Any]
    drain_timeout: float = 120.0
    broker: dict[str, Any] = field(default_factory=dict)  # [broker]: persistence = true|false

    @classmethod
    def load(cls, path: str | Path, short: bool = False) -> Scenario:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        full = float(raw["duration"])
        short_t = raw.get("short", {})
        duration = float(short_t.get("duration", min(full, 30))) if short else full
        scale = duration / full
        events = []
        for e in raw.get("event", []):
            e = dict(e)
            at = e.pop("short_at", None) if short else None
            e.pop("short_at", None)
            e["at"] = float(at if at is not None else e["at"] * scale)
            events.append(e)
        kill = raw.get("kill_loop")
        if kill and short:
            kill = {**kill, "kills": kill.get("short_kills", max(1, kill["kills"] // 10))}
        expect = {**raw.get("expect", {}), **(short_t.get("expect", {}) if short else {})}
        config = {k: dict(v) for k, v in raw.get("config", {}).items()}
        for section, values in (short_t.get("config", {}) if short else {}).items():
            config.setdefault(section, {}).update(values)
        return cls(name=raw["name"], description=raw.get("description", ""), duration=duration,
                   config=config, lines=raw.get("line", []),
                   meters=raw.get("meter", []), events=sorted(events, key=lambda e: e["at"]),
                   kill_loop=kill, expect=expect,
                   drain_timeout=float(raw.get("drain_timeout", 120)),
                   broker=raw.get("broker", {}))


@dataclass
class Rig:
    """Everything around the agent, plus the agent process itself."""

    scenario: Scenario
    work: Path
    meters: dict[str, SimMeter] = field(default_factory=dict)
    kills: int = 0
    kills_during_backlog: int = 0
    restores_ms: list[int] = field(default_factory=list)
    faults_ms: list[tuple[int, int]] = field(default_factory=list)  # (start, end) windows
    fault_open_ms: int | None = None
    entered: int = 0  # manual entries the rig sealed (reports.enter)

    async def start(self) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.broker = Mosquitto(persistence=bool(self.scenario.broker.get("persistence", False)))
        await asyncio.to_thread(self.broker.start)
        self.stack.callback(self.broker.cleanup)
        self.proxy = await FaultProxy(self.broker.port).start()
        self.stack.push_async_callback(self.proxy.stop)
        buses = await self._start_meters()
        key_file = self.work / "signing.key"
        await asyncio.to_thread(self._keygen, key_file)
        raw = _public_key(key_file)
        self.platform = await asyncio.to_thread(
            PlatformSim(self.broker.port, {key_id(raw): raw}, self.work / "platform.db").start)
        self.stack.callback(self.platform.stop)
        self.config_file = self.work / "agent.toml"
        self.config_file.write_text(self._agent_config(key_file, buses), encoding="utf-8")
        self.observer = Observer(self.work / "agent" / "agent.db", self.platform)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stack.push_async_callback(self.stop_agent)

    async def _start_meters(self) -> list[dict[str, Any]]:
        buses: list[dict[str, Any]] = []
        for line in self.scenario.lines:
            meter_side, agent_side = self.stack.enter_context(serial_pair())
            protocol = line.get("protocol", "modbus")
            sims = [self._sim(m, protocol) for m in self.scenario.meters if m.get("bus") == line["name"]]
            if protocol == "modbus":
                sim_line: RtuLine | DiLine = RtuLine(meter_side, sims, baud=line.get("baud", 9600),
                                                     line_rate=line.get("line_rate", True))
            else:
                sim_line = DiLine(meter_side, sims, protocol, baud=line.get("baud", 2400),
                                  line_rate=line.get("line_rate", True))
            await sim_line.start()
            self.stack.push_async_callback(sim_line.stop)
            kind = "modbus-rtu" if protocol == "modbus" else protocol
            buses.append({"name": line["name"], "kind": kind, "device": agent_side,
                          "baud": line.get("baud", 9600), "parity": "N",
                          "timeout": line.get("timeout", 0.3), "retries": line.get("retries", 1),
                          **line.get("agent", {})})
        for m in self.scenario.meters:
            if m.get("bus", "tcp") != "tcp":
                continue
            server = await ModbusTcpServer([self._sim(m)]).start()
            self.stack.push_async_callback(server.stop)
            m["bus"] = f"tcp-{m['name']}"
            buses.append({"name": m["bus"], "kind": "modbus-tcp", "host": "127.0.0.1",
                          "port": server.port, "timeout": 0.5, "retries": 1})
        return buses

    def _sim(self, m: dict[str, Any], protocol: str = "modbus") -> SimMeter:
        points = [PointConfig(**p) for p in m.get("point", [])]
        if protocol != "modbus":
            sim = di_meter(m["name"], m["address"], protocol, points, m.get("profile"),
                           counter_start=m.get("counter_start"))
            sim.mode = m.get("mode", "ok")
        elif m.get("profile"):
            sim = SimMeter.from_profile(m["name"], m.get("unit", 1), m["profile"], points)
        else:
            sim = SimMeter(name=m["name"], unit=m.get("unit", 1), points=points)
        self.meters[sim.name] = sim
        return sim

    def _enter_reports(self, n: int, code: str) -> int:
        """Seal n manual entries (a report type the history window keeps) beside the running
        agent, as `energy-agent enter` would: one store transaction each."""
        from agent.accounting.manual import manual_body, seal_manual
        from agent.config import load_config
        from agent.protocol.sealer import Sealer
        from agent.protocol.signing import load_signer
        from buffer.store import Store

        cfg = load_config(self.config_file)
        store = Store(cfg.db_path)
        try:
            sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file))
            now = int(time.time() * 1000)
            for i in range(n):
                body, period = manual_body(code, str(100 + i), "t", tz=cfg.tz, entered_ms=now,
                                           month=time.strftime("%Y-%m"),
                                           note=f"HIL entry {i + 1} of {n}: " + "x" * 200)
                seal_manual(store, sealer, body, period)
        finally:
            store.close()
        return n

    def _keygen(self, key_file: Path) -> None:
        subprocess.run([sys.executable, "-m", "agent", "keygen", "--key", str(key_file)],
                       check=True, cwd=ROOT, capture_output=True, env=_env())

    def _agent_config(self, key_file: Path, buses: list[dict[str, Any]]) -> str:
        cfg: dict[str, Any] = {
            "agent": {"gateway": GATEWAY, "enterprise": ENTERPRISE,
                      "data_dir": str(self.work / "agent"), "log_level": "info"},
            "platform": {"host": "127.0.0.1", "port": self.proxy.port, "ack": "platform",
                         "ack_timeout": 5.0, "keepalive": 5, "reconnect_min": 0.2,
                         "reconnect_max": 2.0},
            "signing": {"key_file": str(key_file)},
            "schedule": {"poll_interval": 1.0, "seal_interval": 2.0, "heartbeat": 10.0},
        }
        for section, values in self.scenario.config.items():
            cfg.setdefault(section, {}).update(values)
        meters = []
        for m in self.scenario.meters:
            entry = {k: v for k, v in m.items() if k in ("name", "bus", "unit", "address", "profile", "point")}
            meters.append(entry)
        return to_toml(cfg) + "".join(to_toml({"bus": [b]}) for b in buses) + "".join(
            to_toml({"meter": [m]}) for m in meters)

    # -- the agent process -----------------------------------------------------------------

    def start_agent(self) -> None:
        self.log_file = open(self.work / "agent.log", "ab")  # noqa: SIM115 - the child's stderr
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(self.config_file)],
            cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, stdout=self.log_file,
            stderr=subprocess.STDOUT)

    def kill_agent(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.observer.proc.sample(self.proc.pid)
            if self.observer.outbox_pending > 0:
                self.kills_during_backlog += 1
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    async def stop_agent(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.observer.proc.sample(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            log.warning("agent did not stop within 20 s of SIGTERM: killing it")
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()

    # -- faults ----------------------------------------------------------------------------

    async def do(self, e: dict[str, Any]) -> None:
        what = e["do"]
        log.info("t=%5.1f s  %s", e["at"], what)
        now_ms = int(time.time() * 1000)
        if what in RESTORES:
            self.restores_ms.append(now_ms)
        if what in FAULT_STARTS and self.fault_open_ms is None:
            self.fault_open_ms = now_ms
        elif what in FAULT_ENDS and self.fault_open_ms is not None:
            self.faults_ms.append((self.fault_open_ms, now_ms))
            self.fault_open_ms = None
        target, _, verb = what.partition(".")
        if target == "broker":
            await asyncio.to_thread(self.broker.stop if verb == "stop" else self.broker.start)
        elif target == "proxy":
            if verb == "flap":
                self.proxy.flap([(m, float(s)) for m, s in e["schedule"]])
            else:
                await self.proxy.set_mode(verb, e.get("delay"))
        elif target == "platform":
            if verb == "away":
                await asyncio.to_thread(self.platform.go_away)
            elif verb == "back":
                await asyncio.to_thread(self.platform.come_back)
            elif verb in ("ack", "noack"):
                self.platform.ack = verb == "ack"
            elif verb == "reject":
                self.platform.reject_next(int(e.get("n", 1)))
        elif target == "meter":
            sim = self.meters[e["meter"]]
            if verb == "reset":
                sim.reset_counters()
            else:
                sim.mode, sim.delay = verb, float(e.get("delay", sim.delay))
                sim.exception_code = int(e.get("code", sim.exception_code))
        elif what == "reports.enter":
            self.entered += await asyncio.to_thread(self._enter_reports, int(e.get("n", 1)),
                                                    str(e.get("code", "00-00-0000-040001-00")))
        elif what == "agent.kill":
            self.kill_agent()
            await asyncio.sleep(float(e.get("down", 0)))
            self.start_agent()
        else:
            raise ValueError(f"unknown event {what!r}")

    async def restore_all(self) -> None:
        """End every fault so the backlog can drain before the books are closed."""
        if not self.broker.running:
            await self.do({"at": -1, "do": "broker.start"})
        if self.proxy.mode != "pass" or self.proxy._flapper is not None:
            await self.do({"at": -1, "do": "proxy.pass"})
        if not self.platform.connected.is_set():
            await self.do({"at": -1, "do": "platform.back"})
        self.platform.ack = True
        for sim in self.meters.values():
            sim.mode = "ok"
        if self.fault_open_ms is not None:
            self.faults_ms.append((self.fault_open_ms, int(time.time() * 1000)))
            self.fault_open_ms = None


def kill_events(kill: dict[str, Any], duration: float) -> list[dict[str, Any]]:
    """kill -9 at random (seeded) instants spread over the run."""
    rng = random.Random(kill.get("seed", 1))
    n = int(kill["kills"])
    start, end = float(kill.get("start", 3)), duration - float(kill.get("tail", 3))
    slot = (end - start) / n
    lo, hi = kill.get("down", [0.0, 0.5])
    return [{"at": start + i * slot + rng.uniform(0.2, 0.9) * slot, "do": "agent.kill",
             "down": rng.uniform(lo, hi)} for i in range(n)]


async def run_scenario(scn: Scenario, work: Path | None = None,
                       on_tick: Any = None) -> Report:
    work = work or Path(tempfile.mkdtemp(prefix=f"hil-{scn.name}-"))
    rig = Rig(scn, work)
    events = list(scn.events)
    if scn.kill_loop:
        events = sorted(events + kill_events(scn.kill_loop, scn.duration), key=lambda e: e["at"])
    await rig.start()
    try:
        rig.start_agent()
        started = time.time()
        pending = list(events)
        while (elapsed := time.time() - started) < scn.duration:
            while pending and pending[0]["at"] <= elapsed:
                await rig.do(pending.pop(0))
            await _observe(rig, on_tick)
            await asyncio.sleep(0.5)
        cutoff_ms = int(time.time() * 1000)
        await rig.restore_all()
        await _drain(rig, cutoff_ms, scn.drain_timeout, on_tick)
        await rig.stop_agent()
        await asyncio.to_thread(rig.observer.poll)
        poll = float(scn.config.get("schedule", {}).get("poll_interval", 1.0))
        restores = sorted(set(rig.restores_ms) | set(rig.proxy.restored_ms))
        rep = await asyncio.to_thread(
            build_report, scn.name, rig.observer, rig.meters, cutoff_ms, restores,
            poll, int(started * 1000), int(scn.expect.get("window_ms", 5000)),
            ENTERPRISE, GATEWAY, rig.faults_ms)
        rep.kills, rep.kills_during_backlog = rig.kills, rig.kills_during_backlog
        rep.reports_entered = rig.entered
        rep.show_dropped = "min_dropped_envelopes" in scn.expect
        # Which meters the platform saw marked offline (quality 4): the poller took them out
        # after bus.offline_after failed cycles instead of timing out on them every cycle.
        samples = await asyncio.to_thread(rig.platform.samples)
        rep.offline_seen = sorted({m for _e, m, _p, _ts, _v, q in samples if q == 4})
        rep.notes.append(f"work dir {work} (agent.log, agent.toml, platform.db)")
        judge(rep, scn.expect)
        return rep
    finally:
        await rig.stack.aclose()


async def _observe(rig: Rig, on_tick: Any) -> None:
    if rig.proc is not None and rig.proc.poll() is None:
        rig.observer.proc.sample(rig.proc.pid)
    await asyncio.to_thread(rig.observer.poll)
    if on_tick is not None:
        on_tick(rig)


async def _drain(rig: Rig, cutoff_ms: int, timeout: float, on_tick: Any) -> None:
    """Wait until the platform holds every sample committed up to the cut-off.

    Samples in envelopes the agent dropped by policy will never come: once those are the
    only ones missing, wait instead for a status envelope telling the platform of the drops.
    """
    deadline = time.monotonic() + timeout
    obs = rig.observer
    while time.monotonic() < deadline:
        await _observe(rig, on_tick)
        received = {(m, p, ts) for _e, m, p, ts, _v, _q in await asyncio.to_thread(
            rig.platform.samples)}
        dropped = await asyncio.to_thread(dropped_samples, obs, obs.committed) \
            if obs.dropped else set()
        if all(k in received or k in dropped for k in obs.committed if k[2] <= cutoff_ms):
            told = await asyncio.to_thread(reported_drops, rig.platform, ENTERPRISE, GATEWAY)
            if not obs.dropped or (told or 0) >= obs.agent_counters.get("dropped_envelopes", 0):
                return
        await asyncio.sleep(0.5)
    log.warning("backlog not drained within %.0f s", timeout)


def _public_key(key_file: Path) -> bytes:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    return key.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for agent configs: scalars, lists of scalars, tables, arrays of tables."""
    out, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append(f"\n[{prefix}{k}]\n" + to_toml(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                tables.append(f"\n[[{prefix}{k}]]\n" + to_toml(item, f"{prefix}{k}."))
        else:
            out.append(f"{k} = {_scalar(v)}\n")
    return "".join(out) + "".join(tables)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

