"""The gateway's own health, as `status` envelopes on a schedule and an MQTT last will."""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import Config
from agent.protocol.canonical import canonical
from agent.protocol.envelope import will_topic
from agent.protocol.signing import Signer
from buffer.names import MQTT
from buffer.retention import storage_alarm
from buffer.store import Store

if TYPE_CHECKING:
    from agent.protocol.sealer import Sealer
    from agent.runtime.clock import ClockWatch
    from agent.runtime.poller import BusPoller, BusSnapshot
    from agent.uplink.forwarder import Forwarder, ForwarderStats


def last_will(cfg: Config, signer: Signer) -> tuple[str, bytes]:
    """(topic, payload) of the MQTT last will: signed but outside the chain, since the broker
    publishes it after we are gone."""
    a = cfg.agent
    msg: dict[str, Any] = {
        "v": 1, "type": "offline", "enterprise": a.enterprise, "gateway": a.gateway,
        "alg": signer.alg, "kid": signer.key_id,
    }
    msg["sig"] = base64.b64encode(signer.sign(canonical(msg))).decode()
    return will_topic(cfg.platform.topic_prefix, a.enterprise, a.gateway), canonical(msg)


@dataclass(frozen=True, slots=True)
class Live:
    """The running parts' state at one moment, taken on the event loop that owns it."""

    buses: tuple[BusSnapshot, ...]
    forwarders: tuple[ForwarderStats, ...]
    clock_steps: int


class Heartbeat:
    """Builds `status` bodies; the sealer signs and chains them like any envelope."""

    def __init__(self, cfg: Config, store: Store, clock: ClockWatch,
                 pollers: Sequence[BusPoller], forwarders: Sequence[Forwarder]) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.pollers = tuple(pollers)
        self.forwarders = tuple(forwarders)
        self.started = time.time()

    def live(self) -> Live:
        """Call on the event loop: the pollers and forwarders change their state there."""
        return Live(tuple(p.snapshot() for p in self.pollers),
                    tuple(f.stats() for f in self.forwarders), self.clock.steps)

    def body(self, clock_problem: str | None, live: Live) -> dict[str, Any]:
        """Runs on the store thread. Integers and strings only (the envelope rule)."""
        count, oldest = self.store.outbox.backlog(MQTT)
        meters = []
        for bus in live.buses:
            for h in bus.meters:
                m: dict[str, Any] = {
                    "meter": h.meter, "bus": h.bus, "state": "online" if h.online else "offline",
                    "errors_total": h.errors_total,
                }
                if h.last_good_ms is not None:
                    m["last_good"] = h.last_good_ms
                if h.last_error:
                    m["last_error"] = h.last_error
                    m["last_error_at"] = h.last_error_ms or 0
                meters.append(m)
        data_dir = str(self.cfg.db_path.parent)
        free = shutil.disk_usage(data_dir).free if os.path.isdir(data_dir) else 0
        last_seq, last_at = self.store.outbox.last_delivered(MQTT)
        body: dict[str, Any] = {
            "version": __version__,
            "uptime_s": int(time.time() - self.started),
            "meters": meters,
            "backlog": {MQTT: {"pending": count, **({"oldest": oldest} if oldest else {})}},
            "last_delivered": {MQTT: {"seq": last_seq or 0, "at": last_at or 0}},
            "disk": {
                "store_bytes": self.store.size_bytes(),
                "budget_bytes": int(self.cfg.storage.budget_mb * 1024 * 1024),
                "free_bytes": free,
            },
            "clock": {"state": "implausible" if clock_problem else "ok",
                      "steps": live.clock_steps,
                      **({"problem": clock_problem} if clock_problem else {})},
            "uplink": _uplink(live.forwarders[0]) if live.forwarders else {},
            "counters": {k: int(v) for k, v in sorted(self.store.state.counters().items())},
            "overruns": {b.bus: b.overruns for b in sorted(live.buses, key=lambda b: b.bus)
                         if b.overruns},
        }
        alarm = storage_alarm(self.store)
        if alarm is not None:
            body["storage_alarm"] = alarm  # the budget cannot hold 6 months of reports
        return body

    def seal_status(self, sealer: Sealer, live: Live) -> int:
        """Runs on the store thread, with `live` taken on the loop just before."""
        return sealer.seal("status", self.body(sealer.clock_problem, live))


def _uplink(f: ForwarderStats) -> dict[str, Any]:
    out: dict[str, Any] = {
        "connected": "yes" if f.connected else "no",
        "delivered_total": f.delivered_total, "rejected_total": f.rejected_total,
        "failures_total": f.failures_total,
    }
    if f.last_error:
        out["last_error"] = str(f.last_error)
    return out
