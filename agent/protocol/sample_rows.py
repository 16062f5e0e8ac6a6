"""Stored poll rows (buffer/polls.py) rendered straight into the canonical JSON of a `readings`
body: `{"samples":[["meter","point",ts,"value",quality],…]}` (docs/protocol.md).

Building a Python list per sample and canonicalising the lot was most of the sealer's cost.
Instead each layout (a meter and its point names) gets %-format templates once, with the JCS
forms of its names and each point's decimals baked in, and a row becomes its JSON fragment in
one % operation (~30 % cheaper than str.format here). The bytes are exactly canonical()'s for
the samples the sealer used to build with envelope.format_value (tests/test_sample_rows.py
checks it on random rows):
- a finite value: "%.{d}f", the same conversion as format(v, ".{d}f"), which is what
  format_value does for a float;
- NaN and ±inf come out as "nan", "inf", "-inf" and must be "", a negative zero as "-0.00"
  and must be "0.00": one regex pass over the fragment fixes both, run only when the row has
  a non-finite value or a sign bit set.
Anything the templates do not cover (decimals outside 0–9, a timestamp outside JSON's safe
integers) takes the reference path — format_value and canonical() — which also raises exactly
where the old code raised.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence

from agent.protocol.canonical import MAX_SAFE_INTEGER, canonical, canonical_string
from agent.protocol.envelope import format_value
from buffer.polls import MAX_SPAN_MS, decode

# A value field is the only string preceded by a digit and a comma (the sample's ts): a name
# follows "[" or '",', and a quote inside a name is escaped.
_FIX = re.compile(r'(?<=\d,)"(?:-?(?:nan|inf)|-(0(?:\.0*)?))"')
_TS_MIN, _TS_MAX = -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER - MAX_SPAN_MS


def _fix(m: re.Match[str]) -> str:
    return f'"{m.group(1) or ""}"'


def _percent_text(s: str) -> str:
    return canonical_string(s).replace("%", "%%")


class RowRenderer:
    """Renders the rows of one layout: `meter`, its `points` in order, each point's decimals."""

    def __init__(self, meter: str, points: Sequence[str], decimals: Sequence[int]) -> None:
        self.meter = meter
        self.points = tuple(points)
        self.decimals = tuple(decimals)
        n = self.n = len(self.points)
        self.unpack = struct.Struct(f"<{n}d").unpack
        self.unpack_delta = struct.Struct(f"<{n}H").unpack
        self.good = bytes(n)
        # Building the templates also checks the names: a lone surrogate raises here, as
        # canonical() would at sealing.
        self.fast = all(0 <= d <= 9 for d in self.decimals)
        # One timestamp, all GOOD: `uniform % values`, then the timestamp in place of each NUL
        # (JCS escapes a NUL inside a name, so a raw one only marks a timestamp).
        self.uniform = ",".join(f'[{_percent_text(meter)},{_percent_text(p)},\x00,"%.{d}f",0]'
                                for p, d in zip(self.points, self.decimals, strict=True))
        # Per-point timestamps and qualities: `general % (ts0, value0, quality0, ts1, …)`.
        self.general = ",".join(f'[{_percent_text(meter)},{_percent_text(p)},%d,"%.{d}f",%d]'
                                for p, d in zip(self.points, self.decimals, strict=True))
        self.render = self._render_function()

    def _render_function(self) -> Callable[[int, bytes, bytes | None, bytes | None], str]:
        """render(ts, vals, quality, ts_delta): the comma-separated JSON arrays of one row's
        samples (no enclosing brackets). A closure over locals: it runs once per stored row."""
        n, fast, uniform, general, good = self.n, self.fast, self.uniform, self.general, self.good
        unpack, unpack_delta, reference, fix = self.unpack, self.unpack_delta, self.reference, _FIX.sub

        def render(ts: int, vals: bytes, quality: bytes | None, ts_delta: bytes | None) -> str:
            if not (fast and _TS_MIN <= ts <= _TS_MAX):
                return reference(ts, vals, quality, ts_delta)
            values = unpack(vals)
            if quality is None and ts_delta is None:
                text = (uniform % values).replace("\x00", str(ts))
            else:
                args: list[int | float] = [0] * (3 * n)
                args[0::3] = (ts,) * n if ts_delta is None else [ts + d for d in unpack_delta(ts_delta)]
                args[1::3] = values
                args[2::3] = quality or good
                text = general % tuple(args)
            s = sum(values)
            # A NaN or infinity (their sum is not finite), or a sign bit set (the top byte of a
            # little-endian float64 is >= 0x80): rare, so only then look for what to fix.
            if s - s != 0.0 or not vals[7::8].isascii():
                text = fix(_fix, text)
            return text

        return render

    def reference(self, ts: int, vals: bytes, quality: bytes | None, ts_delta: bytes | None) -> str:
        """The same text built the plain way: a list per sample, format_value, canonical()."""
        times, values, qualities = decode(self.n, ts, vals, quality, ts_delta)
        samples = [[self.meter, p, t, format_value(v, d), int(q)] for p, t, v, q, d in
                   zip(self.points, times, values, qualities, self.decimals, strict=True)]
        return canonical(samples)[1:-1].decode("utf-8")


def body_json(fragments: Sequence[str]) -> bytes:
    """The canonical JSON of {"samples": [...]} from rendered rows (at least one)."""
    return ('{"samples":[' + ",".join(fragments) + "]}").encode("utf-8")
