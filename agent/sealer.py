"""Turns committed data into signed, chained envelopes in the outbox.

The daemon seals on the store's thread; `energy-agent enter` seals from another process into
the same file. Neither reads the chain head ahead of time: `Sealer.seal` hands the store a
builder, and the store calls it with the seq and prev inside the transaction that appends the
envelope (Store.enqueue_built), so the chain never forks and no sealer ever sees a stale seq.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.config import Config
from agent.envelope import build_envelope, envelope_id, format_value, topic_for
from agent.signing import Signer
from buffer.store import EnvelopeMeta, Store

log = logging.getLogger("agent.sealer")

SEALED_CURSOR = "sealed_rowid"
# No gateway can truthfully read a meter before this build existed; a clock behind it booted
# without RTC/NTP. Bump with releases.
BUILD_DATE_MS = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
# A clock this far behind the newest stored sample has stepped backwards.
CLOCK_BEHIND_MS = 10 * 60 * 1000


class ClockImplausible(Exception):
    pass


class Sealer:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        signer: Signer,
        clock: Callable[[], float] = time.time,
        batch: int = 1000,  # samples per envelope: ~50 KB, a modest peak in memory and on the link
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.signer = signer
        self.clock = clock
        self.batch = batch
        self.tz = cfg.tz
        self.decimals = {(m.name, p.name): p.value_decimals for m in cfg.meter for p in m.points}
        self.clock_problem: str | None = None
        # series id -> (meter, point, format spec or "" , decimals), learnt as series appear
        self._series: dict[int, tuple[str, str, str, int]] = {}

    def check_clock(self) -> None:
        """Raise ClockImplausible when sealing now would stamp envelopes with a wrong time."""
        now = int(self.clock() * 1000)
        problem = None
        if now < BUILD_DATE_MS:
            problem = f"wall clock {_iso(now)} is before this build ({_iso(BUILD_DATE_MS)})"
        else:
            last = self.store.last_reading_ts()
            if last is not None and now < last - CLOCK_BEHIND_MS:
                problem = f"wall clock {_iso(now)} is behind the newest stored sample {_iso(last)}"
        if problem != self.clock_problem:
            if problem:
                log.error("clock implausible, sealing paused (samples are still stored): %s", problem)
            else:
                log.info("clock plausible again, sealing resumes")
            self.clock_problem = problem
        if problem:
            raise ClockImplausible(problem)

    def seal(self, type: str, body: dict[str, Any], period: str | None = None,
             cursor: tuple[str, int] | None = None) -> int:
        """Sign `body` as the next envelope of the chain and append it (with `cursor`, if
        given) in one transaction; returns its seq."""
        a = self.cfg.agent
        topic = topic_for(self.cfg.platform.topic_prefix, a.enterprise, a.gateway, type)

        def build(seq: int, prev: str) -> tuple[bytes, EnvelopeMeta]:
            # Runs under the store's write lock: the clock is read here so `created` never
            # goes backwards along the chain, even with two processes sealing.
            now = self.clock()
            payload = build_envelope(
                seq=seq, prev=prev, type=type, enterprise=a.enterprise, gateway=a.gateway,
                created=datetime.fromtimestamp(int(now), self.tz), body=body, signer=self.signer,
            )
            meta = EnvelopeMeta(seq=seq, id=envelope_id(a.enterprise, a.gateway, seq), type=type,
                                topic=topic, created_ms=int(now * 1000), period=period)
            return payload, meta

        seq = self.store.enqueue_built(build, cursor)
        log.debug("sealed %s (%s)", envelope_id(a.enterprise, a.gateway, seq), type)
        return seq

    def seal_readings(self) -> int:
        """Seal every committed sample not yet sealed; returns how many envelopes were made."""
        self.check_clock()
        made = 0
        while True:
            after = self.store.cursor(SEALED_CURSOR)
            rows = self.store.sample_rows_after(after, self.batch)
            if not rows:
                return made
            samples = self._samples(rows)
            if self.cfg.platform.send_raw:
                self.seal("readings", {"samples": samples}, cursor=(SEALED_CURSOR, rows[-1][0]))
                made += 1
            else:
                self.store.set_cursor(SEALED_CURSOR, rows[-1][0])

    def _samples(self, rows: list[tuple[int, int, int, float | None, int]]) -> list[list[Any]]:
        """[meter, point, ts, value text, quality] per stored row, the text exactly
        format_value's: a finite non-negative float takes one format() call with its series'
        spec; anything else (None, negative, inf, NaN, not a float) goes to format_value."""
        series = self._series
        out: list[list[Any]] = []
        append = out.append
        for _, sid, ts, v, q in rows:
            entry = series.get(sid)
            if entry is None:
                entry = self._series_entry(sid)
            m, p, spec, d = entry
            if type(v) is float and spec:
                text = format(v, spec)
                if text[0] in "-in":  # negative (perhaps "-0.00"), inf or nan
                    text = format_value(v, d)
            else:
                text = format_value(v, d)
            append([m, p, ts, text, q])
        return out

    def _series_entry(self, sid: int) -> tuple[str, str, str, int]:
        m, p = self.store.series_name(sid)
        d = self.decimals.get((m, p), 3)
        entry = self._series[sid] = (m, p, f".{d}f" if 0 <= d <= 9 else "", d)
        return entry


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
