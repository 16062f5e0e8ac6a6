"""One stored row per meter poll: how a meter's samples become a `polls` row and back.

A row holds the samples of one meter's poll, in the meter's point order:
- `layout_id`: the meter and its point names (table `layouts`), shared by every poll with them;
- `ts`: the smallest timestamp of the row's samples;
- `vals`: one little-endian float64 per point, NaN where the value is None (SQLite stored a
  NaN as NULL in v1, so a NaN read back as None there too);
- `quality`: one byte per point, NULL when every point is GOOD (the common case);
- `ts_delta`: one little-endian uint16 per point, milliseconds after `ts`, NULL when every
  point has `ts` (one request per meter). A meter read in several requests stamps each
  request's points with its own reply time, and gaps carry their own time; a poll whose
  samples span more than MAX_SPAN_MS is stored as several rows.

`encode_polls` gets each meter's poll as a sequence; a MeterPoll (drivers/base.py: one reply,
every point GOOD) of a known layout is packed from its values tuple as it is. `encode` (and
`add_readings`) gets the readings of many meters at once, each meter's points consecutive; a
group (one row) ends where the meter changes or a point name repeats. This is the store
thread's hottest code: the common case — a meter whose layout is cached, one timestamp, all
GOOD — is checked and packed with a handful of C-level tuple operations per meter.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from functools import lru_cache
from operator import attrgetter

from drivers.base import MeterPoll, Quality, Reading

MAX_SPAN_MS = 0xFFFF  # the largest uint16 ts_delta

_METER, _POINT, _TS, _VALUE, _QUALITY = (attrgetter(a) for a in ("meter", "point", "ts", "value", "quality"))
_QUALITIES = {int(q): q for q in Quality}


class BadReading(ValueError):
    """A reading that cannot be stored (a value that is not a number): a driver bug."""


@lru_cache(maxsize=64)
def f64(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}d")


@lru_cache(maxsize=64)
def u16(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}H")


class Layout:
    """A meter and its point names as stored in one row, plus what the hot path compares with."""

    __slots__ = ("good", "layout_id", "meter", "meters", "n", "pack", "pack_delta", "point_set", "points")

    def __init__(self, layout_id: int, meter: str, points: tuple[str, ...]) -> None:
        self.layout_id = layout_id
        self.meter = meter
        self.points = points
        self.n = len(points)
        self.point_set = frozenset(points)
        self.meters = (meter,) * self.n
        self.good = (Quality.GOOD,) * self.n  # the drivers' own member: compared by identity
        self.pack = f64(self.n).pack
        self.pack_delta = u16(self.n).pack

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.meter, self.points


# (layout id, or (meter, points) while the layout has no id yet), ts, vals, quality, ts_delta
Row = tuple[int | tuple[str, tuple[str, ...]], int, bytes, bytes | None, bytes | None]


def encode(rows: Sequence[Reading], latest: dict[str, Layout],
           known: dict[tuple[str, tuple[str, ...]], Layout]) -> list[Row]:
    """The poll rows for `rows`, in order. `latest` maps a meter to the layout it had last
    (the fast path's guess), `known` every layout by (meter, points). A row whose layout is
    not known carries its (meter, points) key in place of the id."""
    count = len(rows)
    if not count:
        return []
    ms = tuple(map(_METER, rows))
    ps = tuple(map(_POINT, rows))
    ts = tuple(map(_TS, rows))
    vs = tuple(map(_VALUE, rows))
    qs = tuple(map(_QUALITY, rows))
    out: list[Row] = []
    append = out.append
    i = 0
    while i < count:
        m = ms[i]
        lay = latest.get(m)
        if lay is not None:
            j = i + lay.n
            # The meter's usual layout, whole, and the group ends right after it.
            if (ps[i:j] == lay.points and ms[i:j] == lay.meters
                    and (j >= count or ms[j] != m or ps[j] in lay.point_set)):
                try:
                    vals = lay.pack(*vs[i:j])
                except struct.error:  # a None (gap) or not a number: the general path
                    vals = b""
                if vals:
                    t = ts[i:j]
                    q = qs[i:j]
                    quality = None if q == lay.good else bytes(q)
                    t0 = t[0]
                    if t.count(t0) == lay.n:
                        append((lay.layout_id, t0, vals, quality, None))
                        i = j
                        continue
                    lo = min(t)
                    if max(t) - lo <= MAX_SPAN_MS:  # several requests, each with its reply time
                        append((lay.layout_id, lo, vals, quality, lay.pack_delta(*[x - lo for x in t])))
                        i = j
                        continue
        j = _group_end(ms, ps, i)
        group = _encode_group(m, ps[i:j], ts[i:j], vs[i:j], qs[i:j], known)
        if len(group) == 1 and type(group[0][0]) is int:  # a known layout: guess it next time
            latest[m] = known[(m, ps[i:j])]
        out.extend(group)
        i = j
    return out


def encode_polls(polls: Sequence[Sequence[Reading]], latest: dict[str, Layout],
                 known: dict[tuple[str, tuple[str, ...]], Layout]) -> list[Row]:
    """`encode` for samples given as one sequence per meter poll, in order. A MeterPoll whose
    meter has its usual layout is packed straight from its values tuple; the rest go through
    `encode`, consecutive ones together."""
    out: list[Row] = []
    other: list[Reading] = []
    for poll in polls:
        if type(poll) is MeterPoll:
            lay = latest.get(poll.meter)
            if lay is not None and poll.points == lay.points:
                if other:
                    out.extend(encode(other, latest, known))
                    other = []
                # A MeterPoll holds finite numbers only, so the pack cannot fail.
                out.append((lay.layout_id, poll.ts, lay.pack(*poll.values), None, None))
                continue
        other.extend(poll)
    if other:
        out.extend(encode(other, latest, known))
    return out


def _group_end(ms: tuple[str, ...], ps: tuple[str, ...], i: int) -> int:
    m, seen, j = ms[i], {ps[i]}, i + 1
    while j < len(ms) and ms[j] == m and ps[j] not in seen:
        seen.add(ps[j])
        j += 1
    return j


def _encode_group(meter: str, points: tuple[str, ...], ts: tuple[int, ...], values: tuple[float | None, ...],
                  qualities: tuple[int, ...], known: dict[tuple[str, tuple[str, ...]], Layout]) -> list[Row]:
    """One meter's consecutive samples as one row, or several when their times span too much."""
    out: list[Row] = []
    start = 0
    while start < len(points):
        lo = hi = ts[start]
        end = start + 1
        while end < len(points) and max(hi, ts[end]) - min(lo, ts[end]) <= MAX_SPAN_MS:
            lo, hi = min(lo, ts[end]), max(hi, ts[end])
            end += 1
        key = (meter, points[start:end])
        lay = known.get(key)
        vals = [_number(meter, p, t, v) for p, t, v in
                zip(points[start:end], ts[start:end], values[start:end], strict=True)]
        q = bytes(qualities[start:end])
        delta = [t - lo for t in ts[start:end]]
        out.append((key if lay is None else lay.layout_id, lo, f64(end - start).pack(*vals),
                    q if any(q) else None, u16(len(delta)).pack(*delta) if any(delta) else None))
        start = end
    return out


def _number(meter: str, point: str, ts: int, v: float | None) -> float:
    if v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    raise BadReading(f"reading {meter}/{point} at {ts}: value {v!r} is not a number")


def decode(n: int, ts: int, vals: bytes, quality: bytes | None, ts_delta: bytes | None
           ) -> tuple[list[int], list[float | None], list[Quality]]:
    """(timestamps, values, qualities) of a row's n samples, in point order."""
    times = [ts] * n if ts_delta is None else [ts + d for d in u16(n).unpack(ts_delta)]
    values: list[float | None] = [None if v != v else v for v in f64(n).unpack(vals)]
    q = _QUALITIES
    qualities = [Quality.GOOD] * n if quality is None else [q[b] if b in q else Quality(b) for b in quality]
    return times, values, qualities


def sample_count(vals: bytes) -> int:
    return len(vals) // 8
