"""Counter arithmetic: from raw cumulative reads to consumption per period, exactly.

A counter point (energy, volume) is read as a running total. Consumption over a period is the
difference of the counter's values at the period's boundaries, where each boundary value is
interpolated between the reads either side (the monitoring system's data-quality requirements:
the statistical day starts at 00:00 ± 1 min).

The hard part is what a raw difference can hide, so every step between two consecutive reads is
classified before it counts:

- normal      the counter went up: the difference is consumption;
- rollover    it went down but a wrap through the modulus explains it as a small step forward;
- reset       it dropped to (near) zero: the meter was cleared; consumption is the new value;
- backwards   it went down for no known reason: counted as zero, flagged, and the last good value
              is held as the baseline, so one bad read can never become huge consumption later;
- replaced    a recorded meter replacement (old final value → new initial value): zero.

A read that jumps up while the next read falls back to between the baseline and it (a garbled
reply, then the counter resumes) is dropped as a spike rather than counted and held against.
"Up" and "between" are measured forward along the counter, through the wrap point on a
roll-over, so a spike decides alike whether it is judged from the baseline or from a boundary
value interpolated past the wrap point.

A period is opened from nothing but the previous period's closing value (the seed), so the
closing value must put the next period in the same state a single pass over both would be in.
Inside a normal or roll-over step it is interpolated along the step; inside a reset or a
backwards step the value before the step is held (when a meter was cleared is unknown), and
the next period, opened from that value, classifies the step exactly as one pass does.

All arithmetic is Decimal on values quantized to the point's decimal places, so sums telescope:
the consumption of consecutive periods adds up exactly to the consumption over their union,
whichever way the span is cut. That is what makes "a month is the sum of its days" exact.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

# Flags a period can carry; the set is part of the wire format (docs/protocol.md).
GAP = "gap"  # reads further apart than the gap limit overlap the period
BACKWARDS = "backwards"  # the counter went down without a recorded replacement
ROLLOVER = "rollover"  # the counter wrapped through its modulus
RESET = "reset"  # the counter restarted from (near) zero
REPLACED = "replaced"  # a recorded meter replacement falls in the period
SPIKE = "spike"  # an implausible read was dropped
INTERPOLATED = "interpolated"  # a boundary value was interpolated across a gap
EXTRAPOLATED = "extrapolated"  # no read on one side of a boundary: the nearest value was held
CLOCK = "clock"  # the gateway clock was stepped during the period
NO_DATA = "no_data"  # no read at all: the value is empty
BAD_READ = "bad_read"  # a read near zero that nothing confirmed as a reset was not used
FREEZE = "freeze"  # a boundary value is the meter's own daily-freeze register
FLAGS = frozenset(
    {GAP, BACKWARDS, ROLLOVER, RESET, REPLACED, SPIKE, INTERPOLATED, EXTRAPOLATED, CLOCK, NO_DATA,
     BAD_READ, FREEZE}
)

# A drop to at most this fraction of the previous value is a meter reset, not a bad read.
RESET_FRACTION = Decimal("0.01")

_READ, _OLD_FINAL, _NEW_INITIAL = 1, 0, 2  # sort order at equal timestamps


@dataclass(frozen=True, slots=True)
class Sample:
    """One good counter read, already quantized (see `to_decimal`)."""

    ts: int  # Unix ms
    value: Decimal


@dataclass(frozen=True, slots=True)
class Replacement:
    """A meter swap recorded by `energy-agent replace-meter`."""

    ts: int  # Unix ms: reads before are the old meter, reads from here on the new one
    old_final: Decimal
    new_initial: Decimal


@dataclass(frozen=True, slots=True)
class PeriodValue:
    """Consumption over [start, end) of one counter, with its boundary values and flags."""

    start: int
    end: int
    start_value: Decimal | None  # effective counter value at `start` (None: no data at all)
    end_value: Decimal | None
    consumption: Decimal | None
    flags: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class _Node:
    ts: int
    eff: Decimal  # effective counter value after this node (held baseline on a backwards step)
    cum: Decimal  # consumption from the first node up to here
    # How the step from the previous node to this one was classified (for interpolation).
    kind: str
    base: Decimal  # value the step starts from: previous eff, or 0 for a reset
    delta: Decimal  # consumption of the step


def to_decimal(value: float, decimals: int) -> Decimal:
    """A float read as the exact decimal it was meant to be, at the point's precision."""
    return Decimal(repr(value)).quantize(_quantum(decimals), rounding=ROUND_HALF_UP)


def modulus_for(type_: str, scale: float, modulus: float | None, decimals: int) -> Decimal | None:
    """Where a counter wraps: the configured modulus, else the integer type's range × scale."""
    if modulus is not None:
        return to_decimal(modulus, decimals)
    if type_[0] in "us" and type_[1:].isdigit():
        return (Decimal(2) ** int(type_[1:]) * Decimal(repr(abs(scale)))).quantize(
            _quantum(decimals)
        )
    return None  # floats do not wrap


def _quantum(decimals: int) -> Decimal:
    return Decimal(1).scaleb(-decimals)


@dataclass(frozen=True, slots=True)
class Rates:
    """What a counter can plausibly do per millisecond: `expected` from its own history (the
    last sealed day), `maximum` from its configuration (rated power, pipe size)."""

    expected: Decimal | None = None
    maximum: Decimal | None = None


NO_RATES = Rates()


def classify(prev: Decimal, cur: Decimal, modulus: Decimal | None, elapsed_ms: int = 0,
             rates: Rates = NO_RATES) -> tuple[str, Decimal, Decimal]:
    """(kind, base, consumption) of a step from effective value `prev` to read `cur`.

    Over a step long enough for the counter to wrap at its expected rate (an outage on a small
    counter), the number of wraps is the one that makes the step closest to what that rate
    gives in the elapsed time, within the maximum rate: a 16-bit counter read again after k
    wraps counts all k. Shorter steps are judged by their value alone, as before."""
    d = cur - prev
    if modulus is not None and rates.expected is not None and elapsed_ms > 0:
        expect = rates.expected * elapsed_ms
        if expect > modulus / 2:
            k = int(((expect - d) / modulus).to_integral_value(ROUND_HALF_UP))
            k = max(k, 0 if d >= 0 else 1)
            if rates.maximum is not None:
                most = rates.maximum * elapsed_ms
                while k > 0 and d + k * modulus > most:
                    k -= 1
            c = d + k * modulus
            if c >= 0 and (rates.maximum is None or c <= rates.maximum * elapsed_ms):
                return (ROLLOVER if k else "normal"), prev, c
    if modulus is not None and rates.maximum is not None and elapsed_ms > 0 and d < 0 \
            and d + modulus > rates.maximum * elapsed_ms and not _near_zero(prev, cur):
        return BACKWARDS, prev, Decimal(0)  # a wrap would need more than the meter can do
    if d >= 0:
        # Forward by more than half the range is a small step backwards through the wrap point.
        if modulus is not None and d > modulus / 2:
            return BACKWARDS, prev, Decimal(0)
        return "normal", prev, d
    if modulus is not None and d + modulus <= modulus / 2:
        return ROLLOVER, prev, d + modulus
    if _near_zero(prev, cur):
        return RESET, Decimal(0), cur
    return BACKWARDS, prev, Decimal(0)


def _near_zero(prev: Decimal, cur: Decimal) -> bool:
    return prev > 0 and 0 <= cur <= prev * RESET_FRACTION


def _walk(
    seed: Sample | None,
    samples: Sequence[Sample],
    replacements: Sequence[Replacement],
    modulus: Decimal | None,
    rates: Rates = NO_RATES,
) -> tuple[list[_Node], list[int], list[int]]:
    events: list[tuple[int, int, Decimal]] = [(s.ts, _READ, s.value) for s in samples]
    for r in replacements:
        events.append((r.ts, _OLD_FINAL, r.old_final))
        events.append((r.ts, _NEW_INITIAL, r.new_initial))
    if seed is not None:
        # The seed is the previous period's closing value; everything at or before it is history.
        events = [e for e in events if e[0] > seed.ts]
    events.sort(key=lambda e: (e[0], e[1]))
    nodes: list[_Node] = []
    spikes: list[int] = []
    dropouts: list[int] = []
    if seed is not None:
        nodes.append(_Node(seed.ts, seed.value, Decimal(0), "seed", seed.value, Decimal(0)))
    for i, (ts, k, v) in enumerate(events):
        if not nodes:
            nodes.append(_Node(ts, v, Decimal(0), "seed", v, Decimal(0)))
            continue
        prev = nodes[-1]
        if k == _READ and _is_spike(prev.eff, v, events, i, modulus):
            spikes.append(ts)
            continue
        if k == _NEW_INITIAL:
            kind, base, delta = REPLACED, v, Decimal(0)
        else:
            kind, base, delta = classify(prev.eff, v, modulus, ts - prev.ts, rates)
        if kind == RESET and not _reset_confirmed(prev.eff, v, events, i):
            # One read near zero that the next read does not confirm (a converter answering
            # zeros, a meter powering up): a bad read, not used. Were it taken as a reset, the
            # next read would count the whole counter from zero.
            dropouts.append(ts)
            continue
        eff = prev.eff if kind == BACKWARDS else v
        nodes.append(_Node(ts, eff, prev.cum + delta, kind, base, delta))
    return nodes, spikes, dropouts


def _reset_confirmed(baseline: Decimal, value: Decimal, events: list[tuple[int, int, Decimal]],
                     i: int) -> bool:
    """A drop to near zero is a reset when what follows says so: a recorded replacement, or a
    next read that stays below the old baseline and rises from the low value. A next read back
    at or above the baseline says the low read was wrong; without a next read it is unconfirmed
    (the next period, opened from the held baseline, decides with the reads it sees)."""
    if i + 1 >= len(events):
        return False
    _, kind, nxt = events[i + 1]
    if kind != _READ:
        return True
    return value <= nxt < baseline


def _rise(prev: Decimal, cur: Decimal, modulus: Decimal | None) -> Decimal | None:
    """How far the counter moved forward from `prev` to `cur` (through the wrap point if the
    step is a roll-over), or None if it fell."""
    if cur >= prev:
        return cur - prev
    kind, _, delta = classify(prev, cur, modulus)
    return delta if kind == ROLLOVER else None


def _is_spike(baseline: Decimal, value: Decimal, events: list[tuple[int, int, Decimal]],
              i: int, modulus: Decimal | None) -> bool:
    """A read above the baseline whose next read of the same meter falls back to between the
    two: a bit error or a garbled reply, not consumption. Judged against the effective
    baseline (not the raw previous read), and "above"/"between" forward along the counter
    (through the wrap point), so that a period opened from any boundary value on the way from
    the baseline to the read decides alike (cutting the history anywhere decides alike)."""
    if i + 1 >= len(events) or events[i + 1][1] != _READ:
        return False
    up = _rise(baseline, value, modulus)
    back = _rise(baseline, events[i + 1][2], modulus)
    return up is not None and back is not None and back < up


def _at(
    nodes: list[_Node], times: list[int], t: int, modulus: Decimal | None, q: Decimal
) -> tuple[Decimal, Decimal, str | None]:
    """(effective value, cumulative consumption, flag) at time t: from the last node at or
    before t, moved along the step after it in proportion to the time elapsed."""
    i = bisect.bisect_right(times, t) - 1
    if i < 0:
        return nodes[0].eff, nodes[0].cum, EXTRAPOLATED
    a = nodes[i]
    if a.ts == t:
        return a.eff, a.cum, None
    if i + 1 >= len(nodes):
        return a.eff, a.cum, EXTRAPOLATED
    b = nodes[i + 1]
    if b.kind in (BACKWARDS, RESET):
        # The baseline is held through a backwards step, and through a reset: the reset's count
        # lands after the boundary. A value on the line from 0 to the new read would open the
        # next period below the baseline, where it can no longer tell the reset happened (its
        # first read looks like a rise from the seed and may be judged a spike instead).
        return a.eff, a.cum, None
    part = (b.delta * Decimal(t - a.ts) / Decimal(b.ts - a.ts)).quantize(q, ROUND_HALF_UP)
    value = b.base + part
    if b.kind == ROLLOVER and modulus is not None and value >= modulus:
        value %= modulus
    # `part` is exactly what the step a → value counts (see module doc: splits telescope).
    return value, a.cum + part, None


def close_periods(
    bounds: Sequence[int],
    samples: Sequence[Sample],
    *,
    decimals: int,
    modulus: Decimal | None = None,
    seed: Decimal | None = None,
    replacements: Sequence[Replacement] = (),
    gap_ms: int | None = None,
    rates: Rates = NO_RATES,
) -> list[PeriodValue]:
    """Consumption of a counter over consecutive periods [bounds[k], bounds[k+1]).

    `seed` is the counter value at bounds[0] carried over from the previous period's closing
    value (so consecutive calls chain exactly); without it the opening value is interpolated
    from `samples`, which should then reach back before bounds[0]. `samples` should reach past
    the last bound, else the closing value is extrapolated (held) and flagged. Reads further
    apart than `gap_ms` mark the periods they overlap with "gap".
    """
    q = _quantum(decimals)
    seed_sample = Sample(bounds[0], seed) if seed is not None else None
    nodes, spikes, dropouts = _walk(seed_sample, samples, replacements, modulus, rates)
    out: list[PeriodValue] = []
    if not nodes:
        for s, e in itertools.pairwise(bounds):
            out.append(PeriodValue(s, e, None, None, None, frozenset({NO_DATA})))
        return out
    times = [n.ts for n in nodes]
    at = [_at(nodes, times, t, modulus, q) for t in bounds]
    first_read = min((s.ts for s in samples), default=None)
    last_read = max((s.ts for s in samples), default=None)
    for k, (s, e) in enumerate(itertools.pairwise(bounds)):
        before_reads = seed is None and (first_read is None or e <= first_read)
        after_reads = last_read < s if last_read is not None else seed is not None
        if before_reads or after_reads:
            # Not one read in or after the period (before the first poll), or none in or
            # since it (the meter absent since before it began): its consumption is unknown —
            # no value, never a zero. After the last read the held boundary values are kept,
            # so the chain carries on and what was consumed meanwhile lands in the first
            # period with reads. (A period inside a gap, with reads on both sides, is
            # interpolated across it and flagged, below.)
            held = not before_reads
            out.append(PeriodValue(s, e, at[k][0] if held else None,
                                   at[k + 1][0] if held else None, None, frozenset({NO_DATA})))
            continue
        flags: set[str] = set()
        (v0, c0, f0), (v1, c1, f1) = at[k], at[k + 1]
        flags.update(f for f in (f0, f1) if f)
        lo = max(bisect.bisect_left(times, s), 1)
        hi = bisect.bisect_right(times, e) + 1
        for j in range(lo, min(hi, len(nodes))):
            a, b = nodes[j - 1], nodes[j]
            # A zero-length replacement step at exactly `s` belongs to the period before.
            inside = (a.ts < e and b.ts > s) or (a.ts == b.ts and s < b.ts <= e)
            if not inside:
                continue
            if b.kind in (ROLLOVER, RESET, BACKWARDS, REPLACED):
                flags.add(b.kind)
            if gap_ms is not None and b.ts - a.ts > gap_ms:
                flags.add(GAP)
                # A boundary inside the gap was interpolated across it.
                if a.ts < s < b.ts or a.ts < e < b.ts:
                    flags.add(INTERPOLATED)
        if any(s <= t < e for t in spikes):
            flags.add(SPIKE)
        if any(s <= t < e for t in dropouts):
            flags.add(BAD_READ)
        if gap_ms is not None and EXTRAPOLATED in flags:
            flags.add(GAP)
        out.append(PeriodValue(s, e, v0, v1, c1 - c0, frozenset(flags)))
    return out
