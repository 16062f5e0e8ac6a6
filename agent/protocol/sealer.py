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
from functools import partial
from typing import Any

from agent.config import Config
from agent.protocol.envelope import build_envelope, envelope_id, topic_for
from agent.protocol.sample_rows import RowRenderer, body_json
from agent.protocol.signing import Signer
from buffer.names import SEALED_CURSOR
from buffer.store import EnvelopeBuilder, EnvelopeMeta, Store

log = logging.getLogger("agent.protocol.sealer")

# No gateway can truthfully read a meter before this build existed; a clock behind it booted
# without RTC/NTP. Bump with releases.
BUILD_DATE_MS = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
# A clock this far behind the newest stored sample has stepped backwards.
CLOCK_BEHIND_MS = 10 * 60 * 1000


# A stored poll row: (id, layout_id, ts, vals, quality, ts_delta), see buffer/polls.py.
Row = tuple[int, int, int, bytes, bytes | None, bytes | None]
# An envelope body: a dict, its canonical JSON bytes, or a function that makes them.
Body = dict[str, Any] | bytes | Callable[[], bytes]


class ClockImplausible(Exception):
    pass


class Sealer:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        signer: Signer,
        clock: Callable[[], float] = time.time,
        # Samples per envelope: ~50 KB, a modest peak in memory and on the link. Envelopes hold
        # whole poll rows (one meter's poll), so most hold a little less; a row with more
        # points than this goes alone into a larger envelope rather than being split, since
        # the sealed cursor is a row id and half a row cannot be marked sealed.
        batch: int = 1000,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.signer = signer
        self.clock = clock
        self.batch = batch
        self.tz = cfg.tz
        self.decimals = {(m.name, p.name): p.value_decimals for m in cfg.meter for p in m.points}
        self.clock_problem: str | None = None
        self._renderers: dict[int, RowRenderer] = {}  # by layout id, made as layouts appear

    def check_clock(self) -> None:
        """Raise ClockImplausible when sealing now would stamp envelopes with a wrong time."""
        now = int(self.clock() * 1000)
        problem = None
        if now < BUILD_DATE_MS:
            problem = f"wall clock {_iso(now)} is before this build ({_iso(BUILD_DATE_MS)})"
        else:
            last = self.store.readings.last_reading_ts()
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

    def seal(self, type: str, body: dict[str, Any] | bytes, period: str | None = None,
             cursor: tuple[str, int] | None = None) -> int:
        """Sign `body` as the next envelope of the chain and append it (with `cursor`, if
        given) in one transaction; returns its seq. `body` is a dict, or the canonical JSON
        bytes of one (see build_envelope's body_json)."""
        return self._seal_all(type, [(body, cursor)], period)[0]

    def _seal_all(self, type: str, items: list[tuple[Body, tuple[str, int] | None]],
                  period: str | None = None) -> list[int]:
        """Several envelopes of one type, consecutive along the chain, in one transaction. A
        body may be a function returning its canonical bytes, called only when its envelope is
        built: one body at a time in memory, however many envelopes the transaction holds."""
        a = self.cfg.agent
        topic = topic_for(self.cfg.platform.topic_prefix, a.enterprise, a.gateway, type)

        def builder(body: Body) -> EnvelopeBuilder:
            def build(seq: int, prev: str) -> tuple[bytes, EnvelopeMeta]:
                # Runs under the store's write lock: the clock is read here so `created` never
                # goes backwards along the chain, even with two processes sealing.
                content = body() if callable(body) else body
                now = self.clock()
                payload = build_envelope(
                    seq=seq, prev=prev, type=type, enterprise=a.enterprise, gateway=a.gateway,
                    created=datetime.fromtimestamp(int(now), self.tz), signer=self.signer,
                    **({"body_json": content} if isinstance(content, bytes) else {"body": content}),
                )
                meta = EnvelopeMeta(seq=seq, id=envelope_id(a.enterprise, a.gateway, seq), type=type,
                                    topic=topic, created_ms=int(now * 1000), period=period)
                return payload, meta
            return build

        seqs = self.store.outbox.enqueue_built_all([(builder(body), cursor) for body, cursor in items])
        for seq in seqs:
            log.debug("sealed %s (%s)", envelope_id(a.enterprise, a.gateway, seq), type)
        return seqs

    def seal_readings(self) -> int:
        """Seal every committed sample not yet sealed; returns how many envelopes were made."""
        self.check_clock()
        made = 0
        after = self.store.state.cursor(SEALED_CURSOR)
        while True:
            rows = self.store.readings.poll_rows_after(after, self.batch)
            if not rows:
                return made
            if not self.cfg.platform.send_raw:
                after = rows[-1][0]
                self.store.state.set_cursor(SEALED_CURSOR, after)
                continue
            chunks = self._chunks(rows)
            if len(rows) == self.batch and len(chunks) > 1:
                chunks.pop()  # perhaps not full: more rows follow, so it goes with them next round
            made += len(self._seal_all("readings", [(partial(self._body, chunk), (SEALED_CURSOR, chunk[-1][0]))
                                                    for chunk in chunks]))
            after = chunks[-1][-1][0]

    def _chunks(self, rows: list[Row]) -> list[list[Row]]:
        """Consecutive whole rows of at most `batch` samples each (a larger row alone)."""
        out: list[list[Row]] = []
        chunk: list[Row] = []
        size = 0
        for row in rows:
            n = len(row[3]) >> 3
            if chunk and size + n > self.batch:
                out.append(chunk)
                chunk, size = [], 0
            chunk.append(row)
            size += n
        if chunk:
            out.append(chunk)
        return out

    def _body(self, rows: list[Row]) -> bytes:
        renderers = self._renderers
        return body_json([(renderers.get(lid) or self._renderer(lid)).render(ts, vals, quality, delta)
                          for _, lid, ts, vals, quality, delta in rows])

    def _renderer(self, layout_id: int) -> RowRenderer:
        lay = self.store.readings.layout(layout_id)
        decimals = [self.decimals.get((lay.meter, p), 3) for p in lay.points]
        r = self._renderers[layout_id] = RowRenderer(lay.meter, lay.points, decimals)
        return r


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
