"""Simulated meters whose every value at every instant is known: the HIL rig's ground truth.

A `SimMeter` is built from the same profile files (or inline points) the agent reads. Each
point's value is a deterministic function of wall-clock time, computed when a request
arrives and encoded with the agent's own codec (`drivers.codec.encode`), so a checker can
ask `true_value(point, ts_ms)` for any sample and both directions of the codec are tested:

- counters grow linearly: raw(t) = base + rate × (t − t0), time quantised to TICK_MS and,
  for integer types, the raw value floored and wrapped at the type's modulus (a real
  roll-over); `reset_counters()` restarts them from zero at a recorded instant;
- instantaneous points step every INST_STEP_MS through a fixed pseudo-random sequence
  around a plausible value for their unit.

Fault modes (`SimMeter.mode`): "ok", "silent" (no reply), "slow" (reply after
`delay` seconds), "exception" (`exception_code`), "corrupt" (bad CRC on RTU; garbage
on TCP). The transports are `ModbusTcpServer` below and `hil.sim_rtu.RtuLine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import struct
import time
from dataclasses import dataclass, field

from drivers.bcd import parse_format
from drivers.codec import encode
from drivers.model import FrameOptions, PointConfig
from drivers.profiles import load_profile

log = logging.getLogger(__name__)

TICK_MS = 100  # counters change at most this often
INST_STEP_MS = 5000  # instantaneous values change this often
_INT_RANGE = {
    "u16": (0, 0xFFFF), "s16": (-0x8000, 0x7FFF), "u32": (0, 0xFFFFFFFF),
    "s32": (-0x80000000, 0x7FFFFFFF), "u64": (0, 2**53), "s64": (-(2**53), 2**53),
}
# A plausible mid value per unit, so the demo shows 230 V rather than 100 V.
_UNIT_MID = {
    "V": 230.0, "kV": 10.5, "A": 25.0, "Hz": 50.0, "kW": 80.0, "W": 800.0, "kvar": 20.0,
    "kVA": 85.0, "var": 2000.0, "VA": 8000.0, "m3/h": 30.0, "t/h": 5.0, "°C": 60.0, "MPa": 0.8,
    "1": 0.9, "": 0.9,  # power factor and other ratios
}
_SEQUENCE = (0, 3, -2, 5, -4, 1, 6, -1, 2, -5, 4, -3, -6, 7, 0, -7)


def int_range(p: PointConfig) -> tuple[float, float]:
    """The raw values a point can hold: its register type's range, or for a BCD (DI) point
    the integers its digits spell (XXXXXX.XX: 0 … 99999999, rolling over after that)."""
    if p.format is not None:
        length, _ = parse_format(p.format)
        top = 10 ** (2 * length) - 1
        return (-(10 ** (2 * length - 1) - 1), 10 ** (2 * length - 1) - 1) if p.signed else (0, top)
    return _INT_RANGE.get(p.type, (-1e12, 1e12))


def raw_scale(p: PointConfig) -> float:
    """Engineering units per raw unit: the scale, and for BCD points the digits' decimals."""
    if p.format is not None:
        return p.scale / 10 ** parse_format(p.format)[1]
    return p.scale


def _stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:8], "big")


@dataclass
class PointModel:
    """How one point's raw register value evolves (in raw units, before scale/offset)."""

    point: PointConfig
    base: float  # raw value at t0
    rate: float  # counters: raw units per second; instantaneous: raw step of the sequence
    phase: int  # instantaneous: where in _SEQUENCE this point starts

    @property
    def is_float(self) -> bool:
        return self.point.type.startswith("f")


def model_point(meter: str, p: PointConfig, counter_start: float | None = None) -> PointModel:
    """A deterministic model that fits the point's type for at least a day of growth."""
    h = _stable_hash(meter, p.name)
    lo, hi = int_range(p)
    scale = abs(raw_scale(p))
    if p.kind == "counter":
        mid = 10_000.0 + h % 5_000 if counter_start is None else counter_start
        raw = (mid - p.offset) / raw_scale(p)
        rate = 0.5 / scale  # ~0.5 engineering units per second
        # Fit a day of growth into the type (a u16 counter at 0.01 kWh would wrap in minutes).
        room = (hi - max(lo, 0)) * 0.3
        if abs(raw) > room and counter_start is None:
            raw = room * 0.5
        rate = max(min(rate, room / 86_400.0), 0.0 if p.type.startswith("f") else 1.0)
        if not p.type.startswith("f"):
            raw, rate = float(int(raw)), float(max(1, int(rate)))
    else:
        mid = _UNIT_MID.get(p.unit, 100.0) * (1 + (h % 3) / 100)
        raw = (mid - p.offset) / raw_scale(p)
        if not lo * 0.6 <= raw <= hi * 0.6:
            raw = (lo + hi) / 2 + (hi - lo) * 0.1
        rate = abs(raw) * 0.004  # the sequence spans about ±3 %
        if not p.type.startswith("f"):
            raw, rate = float(int(raw)), float(max(1, int(rate)))
            raw = max(raw, lo + 8 * rate)  # a tiny ratio in a u16 must not dip below zero
    return PointModel(point=p, base=raw, rate=rate, phase=h % len(_SEQUENCE))


@dataclass
class SimMeter:
    """One simulated meter: points, value model, fault mode. Transport-independent."""

    name: str
    unit: int
    points: list[PointConfig]
    t0_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    mode: str = "ok"  # ok | silent | slow | exception | corrupt
    delay: float = 0.0  # seconds, for mode "slow"
    exception_code: int = 4
    resets: list[int] = field(default_factory=list)  # counter reset instants (ms)
    requests: int = 0  # requests answered (any reply, exceptions included)
    # DL/T 645 / CJ/T 188 meters (hil/sim_di.py): the nameplate address and framing.
    address: str | None = None
    frame: FrameOptions | None = None
    # Where counters start (engineering units): near 999999.99 to watch a BCD counter roll over.
    counter_start: float | None = None

    def __post_init__(self) -> None:
        self.models = {p.name: model_point(self.name, p, self.counter_start) for p in self.points}
        self._by_register: dict[tuple[str, int], tuple[PointModel, int]] = {}
        for m in self.models.values():
            if m.point.register is None:
                continue  # read by data identifier (hil/sim_di.py)
            for i in range(m.point.count):
                self._by_register[m.point.function, m.point.register + i] = (m, i)

    @classmethod
    def from_profile(
        cls, name: str, unit: int, profile: str, extra: list[PointConfig] | None = None
    ) -> SimMeter:
        """Points from config/profiles/{profile}.toml, inline points replacing same-named ones."""
        points = list(load_profile(profile).point)
        for p in extra or []:
            points = [q for q in points if q.name != p.name] + [p]
        return cls(name=name, unit=unit, points=points)

    # -- ground truth ----------------------------------------------------------------------

    def raw_value(self, point: str, ts_ms: int) -> int | float:
        """The raw register value (before scale and offset) at instant ts_ms."""
        m = self.models[point]
        p = m.point
        if p.kind == "counter":
            start, base = self.t0_ms, m.base
            for r in self.resets:
                if r <= ts_ms:
                    start, base = r, 0.0
            elapsed = ((ts_ms - start) // TICK_MS) * TICK_MS / 1000.0
            raw = base + m.rate * max(elapsed, 0.0)
        else:
            k = (ts_ms - self.t0_ms) // INST_STEP_MS + m.phase
            raw = m.base + m.rate * _SEQUENCE[k % len(_SEQUENCE)]
        if m.is_float:
            if p.type == "f32":
                raw = struct.unpack(">f", struct.pack(">f", raw))[0]
            return raw
        lo, hi = int_range(p)
        span = hi - lo + 1
        return int(((int(raw) - lo) % span) + lo)  # counters wrap like the real register

    def true_value(self, point: str, ts_ms: int) -> float:
        """The engineering value (raw × scale + offset) the meter shows at instant ts_ms."""
        p = self.models[point].point
        return self.raw_value(point, ts_ms) * raw_scale(p) + p.offset

    def candidates(self, point: str, ts_ms: int, window_ms: int) -> list[float]:
        """Every value the point showed during [ts_ms − window_ms, ts_ms]."""
        step = TICK_MS if self.models[point].point.kind == "counter" else INST_STEP_MS
        start = ts_ms - window_ms
        instants = {start, ts_ms, *self.resets}
        t = start - start % step + step
        # Counters are monotonic between resets: only the segment ends matter.
        if self.models[point].point.kind != "counter":
            while t <= ts_ms:
                instants.add(t)
                t += step
        return [self.true_value(point, i) for i in sorted(instants) if start <= i <= ts_ms]

    def matches(self, point: str, ts_ms: int, value: str, window_ms: int = 5000) -> bool:
        """Whether a sample's decimal string is a value the point had shortly before ts_ms.

        The sample's ts is when the reply arrived; the value was read when the request got
        here, up to `window_ms` earlier. Tolerance: half a unit of the last decimal printed.
        """
        p = self.models[point].point
        try:
            v = float(value)
        except ValueError:
            return False
        decimals = len(value.split(".", 1)[1]) if "." in value else 0
        tol = 0.5 * 10.0**-decimals + 1e-9 * abs(v)
        if p.kind == "counter":
            # Between two known instants a counter took every value in between (per segment).
            segments = self._segments(point, ts_ms + 50, window_ms + 50)
            return any(lo - tol <= v <= hi + tol for lo, hi in segments)
        return any(abs(v - c) <= tol for c in self.candidates(point, ts_ms + 50, window_ms + 50))

    def _segments(self, point: str, ts_ms: int, window_ms: int) -> list[tuple[float, float]]:
        start = ts_ms - window_ms
        cuts = [start] + [r for r in self.resets if start < r <= ts_ms] + [ts_ms + 1]
        out = []
        for a, b in itertools.pairwise(cuts):
            va, vb = self.true_value(point, a), self.true_value(point, b - 1)
            p = self.models[point].point
            lo_raw, hi_raw = self.raw_value(point, a), self.raw_value(point, b - 1)
            if not self.models[point].is_float and hi_raw < lo_raw and p.scale > 0:
                # Wrapped inside the window: two ranges, up to the top and from the bottom.
                lo, hi = int_range(p)
                k = raw_scale(p)
                out += [(va, hi * k + p.offset), (lo * k + p.offset, vb)]
                continue
            out.append((min(va, vb), max(va, vb)))
        return out

    # -- Modbus ----------------------------------------------------------------------------

    def registers(self, function: str, address: int, count: int, ts_ms: int) -> list[int]:
        """The register block a read returns at ts_ms; unmapped registers read as 0."""
        out: list[int] = []
        cache: dict[str, list[int]] = {}
        for reg in range(address, address + count):
            hit = self._by_register.get((function, reg))
            if hit is None:
                out.append(0)
                continue
            m, i = hit
            words = cache.get(m.point.name)
            if words is None:
                words = encode(self.raw_value(m.point.name, ts_ms), m.point.type, m.point.order)
                cache[m.point.name] = words
            out.append(words[i])
        return out

    def reset_counters(self, at_ms: int | None = None) -> None:
        """Counter reset (meter replaced or cleared): counters restart from 0 at `at_ms`."""
        self.resets.append(at_ms if at_ms is not None else int(time.time() * 1000))
        self.resets.sort()


def handle_pdu(meter: SimMeter, pdu: bytes, ts_ms: int) -> bytes:
    """Answer one request PDU (function code + data): reads 0x03/0x04, else exception 1."""
    fc = pdu[0] if pdu else 0
    if meter.mode == "exception":
        return bytes([fc | 0x80, meter.exception_code])
    if fc not in (3, 4) or len(pdu) != 5:
        return bytes([fc | 0x80, 1])
    address, count = struct.unpack(">HH", pdu[1:5])
    if not 1 <= count <= 125:
        return bytes([fc | 0x80, 3])
    if address + count > 0x10000:
        return bytes([fc | 0x80, 2])
    regs = meter.registers("holding" if fc == 3 else "input", address, count, ts_ms)
    return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *regs)


class ModbusTcpServer:
    """A Modbus TCP endpoint on 127.0.0.1 (port chosen by the kernel) serving some meters.

    An unknown unit id gets exception 0x0B (gateway target failed to respond), as a Modbus
    TCP gateway answers for a slave that is not there.
    """

    def __init__(self, meters: list[SimMeter], host: str = "127.0.0.1", port: int = 0) -> None:
        self.meters = {m.unit: m for m in meters}
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> ModbusTcpServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection: a meter that lost power."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(max(length - 1, 0))
                reply = await self._answer(unit, pdu)
                if reply is None:
                    continue
                writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, unit: int, pdu: bytes) -> bytes | None:
        meter = self.meters.get(unit)
        if meter is None:
            return bytes([(pdu[0] if pdu else 0) | 0x80, 0x0B])
        if meter.mode == "silent":
            return None
        if meter.mode == "slow":
            await asyncio.sleep(meter.delay)
        reply = handle_pdu(meter, pdu, int(time.time() * 1000))
        meter.requests += 1
        if meter.mode == "corrupt":
            return reply[:1] + b"\xff" * (len(reply) - 1)  # wrong byte count, garbage data
        return reply
