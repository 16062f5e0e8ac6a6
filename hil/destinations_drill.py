"""Two destinations at once, in simulated time: a real Mosquitto and the provincial HTTPS
simulator (hil/province_sim.py), fed by the agent's own Reporter, Sealer, store and one
Forwarder per destination — exactly the objects the daemon wires (agent/uplink/factory.py).

    python -m hil run hil/scenarios/destinations/province-down.toml [--short]

Simulated time lets an hour-long outage and a day and month boundary fit in seconds: every
tick of `tick` real seconds is one simulated minute, in which the simulated meter is read once
and the Reporter seals whatever interval, day or month became due (the sealer's clock is the
simulated one). Faults are played at simulated minutes. At the end every fault is lifted and
both backlogs drain. The report says, per destination:

- every interval (statType 0), daily (1) and monthly (2) value the sealed envelopes hold
  arrived exactly once and with the sealed value (MQTT: in the envelopes the subscriber got,
  de-duplicated by envelope id as a platform does; HTTPS: the simulator's records);
- duplicates the simulator counted (same record key posted twice);
- the delay from sealing to delivery (the uplink's acknowledgement) of each envelope, split
  into while the *other* destination was down and otherwise — an outage of one must not
  delay the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.config import load_config
from agent.config.destinations import destination_types
from agent.runtime.store_thread import StoreThread
from agent.uplink.factory import backoff, open_uplink, window
from agent.uplink.forwarder import Forwarder
from hil.broker import Mosquitto, Subscriber
from hil.province_sim import ProvinceSim

ENTERPRISE, GATEWAY = "91370600780790663W", "drill-gw"
SECRET, PASSWORD = "Wk-0123456789abcdef-province-issued", "drill-pass1"
TZ = ZoneInfo("Asia/Shanghai")
# Three counters on one meter: each statistics envelope holds three records, two posts at
# `batch = 2`, so a token can die between the posts of one envelope.
POINTS = (("kwh", 0, "00-00-0000-020201-10", 1.25), ("kwh_a", 2, "01-00-0000-020201-10", 0.5),
          ("kwh_b", 4, "02-00-0000-020201-10", 0.75))
STAT = {"interval": 0, "daily": 1, "monthly": 2}


@dataclass
class Drill:
    name: str
    description: str
    start: str  # local simulated start, "2026-11-30T22:30"
    minutes: int
    tick: float
    events: list[dict[str, Any]]
    token_ttl: float = 600.0
    drain_timeout: float = 60.0

    @classmethod
    def load(cls, path: str | Path, short: bool = False) -> Drill:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        over = raw.get("short", {}) if short else {}
        return cls(name=raw["name"], description=raw.get("description", ""),
                   start=over.get("start", raw["start"]), minutes=int(over.get("minutes", raw["minutes"])),
                   tick=float(over.get("tick", raw.get("tick", 0.05))),
                   events=sorted(over.get("event", raw.get("event", [])), key=lambda e: e["at"]),
                   token_ttl=float(over.get("token_ttl", raw.get("token_ttl", 600.0))),
                   drain_timeout=float(raw.get("drain_timeout", 60.0)))


@dataclass
class DestinationResult:
    expected: int = 0  # values sealed for it (interval, daily, monthly)
    received: int = 0  # distinct values it got
    missing: list[Any] = field(default_factory=list)
    wrong: list[Any] = field(default_factory=list)
    duplicates: int = 0  # the same value arriving twice, as the far end counts it
    delays_other_down: list[float] = field(default_factory=list)
    delays_normal: list[float] = field(default_factory=list)

    @property
    def max_delay_other_down(self) -> float:
        return max(self.delays_other_down, default=0.0)

    @property
    def max_delay_normal(self) -> float:
        return max(self.delays_normal, default=0.0)


@dataclass
class DrillReport:
    name: str
    envelopes: dict[str, int] = field(default_factory=dict)  # type -> how many were sealed
    results: dict[str, DestinationResult] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # the province simulator's
    drained: bool = False

    def text(self) -> str:
        lines = [f"drill {self.name}: sealed {self.envelopes}; drained: {self.drained}"]
        for name, r in self.results.items():
            lines.append(
                f"  {name}: {r.received}/{r.expected} values, missing {len(r.missing)}, wrong "
                f"{len(r.wrong)}, duplicates {r.duplicates}; delay sealed→delivered max "
                f"{r.max_delay_normal * 1000:.0f} ms normally, {r.max_delay_other_down * 1000:.0f} ms "
                f"while the other destination was down ({len(r.delays_other_down)} envelopes)")
        lines.append(f"  province simulator: {self.counters}")
        return "\n".join(lines)


class _Timed:
    """An uplink that notes when each envelope was acknowledged (the drill's stopwatch)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.acked: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(self, topic: str, payload: bytes, envelope_id: str) -> None:
        await self.inner.publish(topic, payload, envelope_id)
        self.acked.setdefault(envelope_id, time.monotonic())


def _config(work: Path, broker_port: int, sim: ProvinceSim) -> Path:
    (work / "secret").write_text(SECRET)
    (work / "password").write_text(PASSWORD)
    assert sim.ca is not None
    text = f"""
[agent]
gateway = "{GATEWAY}"
enterprise = "{ENTERPRISE}"
data_dir = "{work / 'agent'}"

[signing]
key_file = "{work / 'key.pem'}"

[schedule]
poll_interval = 60
interval_minutes = 15
daily_seal_at = "00:05"

[[destination]]
name = "mqtt"
kind = "mqtt"
host = "127.0.0.1"
port = {broker_port}
ack = "broker"
reconnect_min = 0.2
reconnect_max = 1.0

[[destination]]
name = "province"
kind = "province-https"
url = "{sim.url}"
ca_file = "{sim.ca.ca_file}"
secret_key_file = "{work / 'secret'}"
password_file = "{work / 'password'}"
timeout = 2.0
batch = 2
backoff_min = 0.2
backoff_max = 1.0

[[bus]]
name = "tcp1"
kind = "modbus-tcp"
host = "127.0.0.1"

[[meter]]
name = "main"
bus = "tcp1"
unit = 1
"""
    for name, register, code, _rate in POINTS:
        text += f"""
[[meter.point]]
name = "{name}"
register = {register}
type = "u32"
scale = 0.01
kind = "counter"
variety = "electricity"
unit = "kWh"
code = "{code}"
"""
    path = work / "agent.toml"
    path.write_text(text)
    return path


def _local_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp() * 1000)


async def run_drill(drill: Drill, work: Path) -> DrillReport:
    from agent.accounting.reports import Reporter
    from agent.protocol.sealer import Sealer
    from agent.protocol.signing import generate_key, load_signer
    from buffer.store import Store
    from drivers.base import Quality, Reading

    work.mkdir(parents=True, exist_ok=True)
    db = StoreThread()
    report = DrillReport(drill.name)
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Mosquitto(persistence=True))
        sub = Subscriber(broker.port, f"energy/{ENTERPRISE}/{GATEWAY}/up/#").start()
        stack.callback(sub.stop)
        sim = ProvinceSim(work, {ENTERPRISE: (SECRET, PASSWORD)}, token_ttl=drill.token_ttl)
        stack.enter_context(sim)
        cfg = load_config(_config(work, broker.port, sim))
        generate_key(cfg.signing.key_file)
        store = await db.call(Store, cfg.db_path, destination_types(cfg))
        now_ms = _local_ms(drill.start)
        sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file), clock=lambda: now_ms / 1000)
        reporter = Reporter(cfg, store, sealer)
        forwarders: list[Forwarder] = []
        timed: dict[str, _Timed] = {}
        for dest in cfg.destination:
            up = timed[dest.name] = _Timed(open_uplink(dest, cfg, store, db, None))
            lo, hi = backoff(dest)
            forwarders.append(Forwarder(store, db, up, dest.name, window(dest), idle_check=0.2,
                                        backoff_min=lo, backoff_max=hi))  # type: ignore[arg-type]
        stop = asyncio.Event()
        for f in forwarders:
            await f.uplink.start()
        tasks = [asyncio.create_task(f.run(stop)) for f in forwarders]
        sealed_at: dict[int, float] = {}  # seq -> monotonic
        down: dict[str, list[tuple[float, float]]] = {"mqtt": [], "province": []}
        down_since: dict[str, float] = {}
        start_ms = now_ms
        events = list(drill.events)
        try:
            for minute in range(drill.minutes):
                now_ms = start_ms + minute * 60_000
                while events and events[0]["at"] <= minute:
                    await _apply(events.pop(0), broker, sim, down_since, down)
                readings = [Reading("main", name, now_ms + 150, round(1000 + minute * rate, 2), Quality.GOOD)
                            for name, _, _, rate in POINTS]
                await db.call(store.readings.add_readings, readings)
                seqs = await db.call(reporter.seal_due, now_ms + 30_000)
                t = time.monotonic()
                for s in seqs if minute else ():  # the catch-up pass is not timed (below)
                    sealed_at[s] = t
                if seqs:
                    for f in forwarders:
                        f.wake()
                if minute == 0:
                    # The first pass catches up on the day so far (empty intervals since
                    # midnight); let both destinations take that before the clock runs, so
                    # the delays measured are those of the timeline, not of the catch-up.
                    await _drain(db, store, forwarders, drill.drain_timeout)
                await asyncio.sleep(drill.tick)
            for e in events:  # lift whatever is still on
                await _apply(e, broker, sim, down_since, down)
            sim.hang = 0.0
            for name in list(down_since):
                await _apply({"do": f"{name}.up"}, broker, sim, down_since, down)
            report.drained = await _drain(db, store, forwarders, drill.drain_timeout)
            await asyncio.sleep(0.5)  # the subscriber's last messages
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for f in forwarders:
                await f.uplink.stop()
        rows = await db.call(_sealed_rows, store)
        await db.call(store.close)
        db.shutdown()
        report.envelopes = {t: sum(1 for r in rows if r[1] == t) for t in sorted({r[1] for r in rows})}
        expected = _expected_values(rows)
        report.results["mqtt"] = _judge_mqtt(expected, sub.snapshot())
        report.results["province"] = _judge_province(expected, sim)
        report.counters = dict(vars(sim.counters))
        for name, other in (("mqtt", "province"), ("province", "mqtt")):
            r = report.results[name]
            for seq, id_, type_ in ((s, i, t) for s, t, i, _ in rows):
                if type_ not in STAT or seq not in sealed_at or id_ not in timed[name].acked:
                    continue
                t0, delay = sealed_at[seq], timed[name].acked[id_] - sealed_at[seq]
                own_down = any(a <= t0 <= b or t0 <= a <= t0 + delay for a, b in down[name])
                if own_down:
                    continue  # its own outage: a delay is expected
                if any(a <= t0 <= b for a, b in down[other]):
                    r.delays_other_down.append(delay)
                else:
                    r.delays_normal.append(delay)
    return report


async def _drain(db: StoreThread, store: Any,
                 forwarders: list[Forwarder], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [await db.call(store.outbox.backlog, f.destination) for f in forwarders]
        if all(n == 0 for n, _ in left):
            return True
        for f in forwarders:
            f.wake()
        await asyncio.sleep(0.05)
    return False


async def _apply(e: dict[str, Any], broker: Mosquitto, sim: ProvinceSim,
                 since: dict[str, float], down: dict[str, list[tuple[float, float]]]) -> None:
    do = e["do"]
    now = time.monotonic()
    if do == "mqtt.down":
        await asyncio.to_thread(broker.stop)
        since["mqtt"] = now
    elif do == "mqtt.up":
        await asyncio.to_thread(broker.start)
        down["mqtt"].append((since.pop("mqtt", now), now))
    elif do == "province.down":
        sim.down = True
        since["province"] = now
    elif do == "province.up":
        sim.down = False
        down["province"].append((since.pop("province", now), now))
    elif do == "province.slow":  # answers, but each request after `seconds`
        sim.hang = float(e["seconds"])
        since["province"] = now
    elif do == "province.fast":
        sim.hang = 0.0
        down["province"].append((since.pop("province", now), now))
    elif do == "province.expire_tokens_every":
        sim.expire_every = int(e["posts"])
    elif do == "province.fail":
        sim.fail_next(int(e.get("times", 1)))
    else:
        raise ValueError(f"unknown drill action {do!r}")


def _sealed_rows(store: Any) -> list[tuple[int, str, str, bytes]]:
    out = []
    for t in ("interval", "daily", "monthly", "status", "readings", "manual"):
        out += [(r.seq, r.type, r.id, r.payload) for r in store.outbox.envelopes(t)]
    return sorted(out)


def _values(payload: bytes) -> list[tuple[str, int, str, str]]:
    """(dataCode, statType, statDate as the province has it, value) of a sealed envelope."""
    env = json.loads(payload)
    out = []
    for it in env["body"].get("items", []):
        if it.get("value", "") == "":
            continue
        start = datetime.fromisoformat(it["periodStart"]).strftime("%Y-%m-%d %H:%M:%S")
        out.append((it["dataCode"], int(it["statType"]), start, it["value"]))
    return out


def _expected_values(rows: list[tuple[int, str, str, bytes]]) -> dict[tuple[str, int, str], str]:
    expected: dict[tuple[str, int, str], str] = {}
    for _, type_, _, payload in rows:
        if type_ in STAT:
            for code, st, date, value in _values(payload):
                expected[(code, st, date)] = value
    return expected


def _judge(expected: dict[tuple[str, int, str], str], got: list[tuple[str, int, str, str]],
           r: DestinationResult) -> DestinationResult:
    seen: dict[tuple[str, int, str], str] = {}
    for code, st, date, value in got:
        key = (code, st, date)
        if key in seen:
            r.duplicates += 1
        seen[key] = value
    r.expected, r.received = len(expected), len(seen)
    r.missing = sorted(k for k in expected if k not in seen)
    r.wrong = sorted((k, v, expected.get(k)) for k, v in seen.items() if expected.get(k) != v)
    return r


def _judge_mqtt(expected: dict[tuple[str, int, str], str],
                messages: list[tuple[str, bytes]]) -> DestinationResult:
    by_id: dict[str, bytes] = {}
    for _, payload in messages:  # a platform de-duplicates by envelope id
        env = json.loads(payload)
        if env["type"] in STAT:
            by_id.setdefault(env["id"], payload)
    got = [v for p in by_id.values() for v in _values(p)]
    return _judge(expected, got, DestinationResult())


def _judge_province(expected: dict[tuple[str, int, str], str], sim: ProvinceSim) -> DestinationResult:
    got = [(code, st, date, value) for code, st, _input, date, value, _valid in sim.records()]
    r = _judge(expected, got, DestinationResult())
    r.duplicates = sim.counters.duplicates  # the simulator keeps a key once and counts repeats
    return r
