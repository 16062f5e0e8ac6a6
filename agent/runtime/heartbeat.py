"""The gateway's own health, as `status` envelopes on a schedule and an MQTT last will."""

from __future__ import annotations

import base64
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import Config
from agent.protocol.canonical import canonical
from agent.protocol.envelope import will_topic
from agent.protocol.signing import Signer
from buffer.names import MQTT
from buffer.store import Store

if TYPE_CHECKING:
    from agent.protocol.sealer import Sealer
    from agent.runtime.clock import ClockWatch
    from agent.runtime.poller import BusPoller
    from agent.uplink.forwarder import Forwarder


class Heartbeat:
    def __init__(self, cfg: Config, store: Store, signer: Signer) -> None:
        self.cfg = cfg
        self.store = store
        self.signer = signer
        self.started = time.time()
        self.pollers: list[BusPoller] = []
        self.forwarder: Forwarder | None = None
        self.overruns: dict[str, int] = {}
        self.clock: ClockWatch | None = None

    def will(self) -> tuple[str, bytes]:
        """Signed but outside the chain: the broker publishes it after we are gone."""
        a = self.cfg.agent
        msg: dict[str, Any] = {
            "v": 1, "type": "offline", "enterprise": a.enterprise, "gateway": a.gateway,
            "alg": self.signer.alg, "kid": self.signer.key_id,
        }
        msg["sig"] = base64.b64encode(self.signer.sign(canonical(msg))).decode()
        return will_topic(self.cfg.platform.topic_prefix, a.enterprise, a.gateway), canonical(msg)

    def body(self, clock_problem: str | None) -> dict[str, Any]:
        """Runs on the store thread. Integers and strings only (the envelope rule)."""
        count, oldest = self.store.outbox.backlog(MQTT)
        meters = []
        for p in self.pollers:
            for h in p.health.values():
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
                      "steps": self.clock.steps if self.clock else 0,
                      **({"problem": clock_problem} if clock_problem else {})},
            "uplink": self._uplink(),
            "counters": {k: int(v) for k, v in sorted(self.store.state.counters().items())},
            "overruns": dict(sorted(self.overruns.items())),
        }
        return body

    def _uplink(self) -> dict[str, Any]:
        if self.forwarder is None:
            return {}
        f = self.forwarder
        out: dict[str, Any] = {
            "connected": "yes" if f.uplink.connected else "no",
            "delivered_total": f.delivered_total, "rejected_total": f.rejected_total,
            "failures_total": f.failures_total,
        }
        if f.last_error:
            out["last_error"] = str(f.last_error)
        return out

    def seal_status(self, sealer: Sealer) -> int:
        return sealer.seal("status", self.body(sealer.clock_problem))
