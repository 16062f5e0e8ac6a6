"""Simulated DL/T 645-2007 and CJ/T 188 meters on one end of a pseudo-terminal pair.

Several `SimMeter`s (with `address` set) answer on one `DiLine`, each to frames carrying its
own address; other addresses are met with silence, as on a real bus. Values come from the
same deterministic model as the Modbus simulators (hil/sim_meter.py), encoded with the
drivers' own frame functions, so the checker knows every true value.

Fault modes (`SimMeter.mode`): "ok", "silent", "slow" (`delay` seconds), "exception" (an
error reply: D1h with `di_error`, or C1h with status bytes), "corrupt" (checksum off by one),
"follow-up" (DL/T 645: every value split over a B1h reply and a 12h follow-up frame),
"follow-up-lost" (B1h, then silence to the follow-up read).
Counters roll over like the real BCD register (XXXXXX.XX after 999999.99); start them near
the top with `SimMeter.counter_start`. With `line_rate=True` each reply waits for what the
request and reply cost on a real line at the baud rate, plus the meter's turnaround.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from drivers import cjt188_frame as cjt
from drivers import dlt645_frame as dlt
from drivers.bcd import address_bytes, int_to_bcd, parse_format
from drivers.di_layout import resolve_point
from drivers.model import FrameOptions, PointConfig
from drivers.profiles import load_profile
from hil.pty_port import PtyPort
from hil.sim_meter import SimMeter

log = logging.getLogger(__name__)

GARBAGE_GAP_S = 0.2


def resolved_points(points: list[PointConfig], protocol: str, frame: FrameOptions | None) -> list[PointConfig]:
    """Points with at/format filled in, as the agent's loader resolves them."""
    out = []
    for p in points:
        r = resolve_point(p, protocol, frame)
        if isinstance(r, str):
            raise ValueError(f"point {p.name}: {r}")
        out.append(r)
    return out


def di_meter(name: str, address: str, protocol: str, points: list[PointConfig] | None = None,
             profile: str | None = None, frame: FrameOptions | None = None, **kw: Any) -> SimMeter:
    """A simulated DL/T 645 / CJ/T 188 meter from a profile (inline points replacing its
    same-named ones) or inline points, framed like the profile says unless `frame` is given."""
    if profile is not None:
        prof = load_profile(profile)
        base = list(prof.point)
        for p in points or []:
            base = [q for q in base if q.name != p.name] + [p]
        points = base
        frame = frame or prof.profile.frame
    resolved = resolved_points(points or [], protocol, frame)
    return SimMeter(name=name, unit=0, points=resolved, address=address, frame=frame, **kw)


class DiLine(PtyPort):
    """The meters' side of one DL/T 645 or CJ/T 188 line."""

    def __init__(self, device: str, meters: list[SimMeter], protocol: str, baud: int = 2400,
                 char_bits: int = 11, line_rate: bool = False, turnaround: float = 0.02) -> None:
        if protocol not in ("dlt645", "cjt188"):
            raise ValueError(f"protocol {protocol!r}: expected dlt645 or cjt188")
        super().__init__(device)
        self.protocol = protocol
        self.label = f"{protocol} line"
        self.meters = meters
        self.baud, self.char_bits = baud, char_bits
        self.line_rate, self.turnaround = line_rate, turnaround
        self.frames_seen = 0
        self.bad_frames = 0
        self._buf = bytearray()
        self._last_rx = 0.0
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._find: Callable[[bytearray], tuple[Any, int]] = (
            dlt.find_frame if protocol == "dlt645" else cjt.find_frame)

    def _on_readable(self) -> None:
        data = self._read()
        if not data:
            return
        now = time.monotonic()
        if self._buf and now - self._last_rx > GARBAGE_GAP_S:
            self._buf.clear()
        self._last_rx = now
        self._buf += data
        while True:
            try:
                frame, used = self._find(self._buf)
            except dlt.BadFrame as e:
                self.bad_frames += 1
                del self._buf[: e.args[1]]
                continue
            if used:
                del self._buf[:used]
            if frame is None:
                return
            self.frames_seen += 1
            self._queue.put_nowait((frame, used))  # bytes of the request, preamble included

    async def _answer_loop(self) -> None:
        while True:
            frame, request_bytes = await self._queue.get()
            try:
                replies = self._answers(frame)
            except Exception as e:  # a simulator bug must show, not kill the line
                log.error("%s line %s: cannot answer %s: %s", self.protocol, self.device, frame, e)
                continue
            for meter, reply in replies:
                if meter.mode == "silent":
                    continue
                if meter.mode == "slow":
                    await asyncio.sleep(meter.delay)
                meter.requests += 1
                if meter.mode == "corrupt":
                    reply = reply[:-2] + bytes([(reply[-2] + 1) & 0xFF]) + reply[-1:]
                if self.line_rate:
                    char = self.char_bits / self.baud
                    await asyncio.sleep((request_bytes + len(reply)) * char + self.turnaround)
                self._write(reply)

    def _answers(self, frame: Any) -> list[tuple[SimMeter, bytes]]:
        if frame.is_reply:
            return []
        out = []
        for m in self.meters:
            opts = m.frame or FrameOptions()
            answer = self._dlt_answer if self.protocol == "dlt645" else self._cjt_answer
            reply = answer(m, opts, frame)
            if reply is not None:
                out.append((m, reply))
        return out

    # -- DL/T 645 ------------------------------------------------------------------------

    def _dlt_answer(self, m: SimMeter, opts: FrameOptions, frame: dlt.Frame) -> bytes | None:
        address = address_bytes(m.address or "", 6)
        pre = b"\xfe" * opts.preamble
        if frame.function == dlt.READ_ADDRESS and frame.address == dlt.WILDCARD:
            return dlt.address_reply(address, pre)
        if frame.address != address:
            return None
        if frame.function not in (dlt.READ, dlt.READ_FOLLOW_UP) or len(frame.data) < 4:
            return dlt.error_reply(address, frame.function, 0x01, pre)
        di = frame.data[:4][::-1].hex().upper()
        if m.mode == "exception":
            return dlt.error_reply(address, frame.function, m.exception_code & 0x7F or 0x02, pre)
        values = self._values(m, opts, di)
        if values is None:
            return dlt.error_reply(address, frame.function, 0x02, pre)  # no such data
        if m.mode == "follow-up-lost" and frame.function == dlt.READ_FOLLOW_UP:
            return None  # announces more frames, then never sends them
        if m.mode not in ("follow-up", "follow-up-lost") or len(values) < 2:
            if frame.function == dlt.READ_FOLLOW_UP:
                return dlt.error_reply(address, frame.function, 0x01, pre)
            return dlt.read_reply(address, di, values, preamble=pre)
        half = len(values) // 2
        if frame.function == dlt.READ:
            return dlt.read_reply(address, di, values[:half], more=True, preamble=pre)
        seq = frame.data[4] if len(frame.data) > 4 else 0
        return dlt.follow_up_reply(address, di, values[half:], seq, preamble=pre)

    # -- CJ/T 188 ------------------------------------------------------------------------

    def _cjt_answer(self, m: SimMeter, opts: FrameOptions, frame: cjt.Frame) -> bytes | None:
        address = address_bytes(m.address or "", 7)
        meter_type = int(opts.meter_type or "10", 16)
        if frame.function == cjt.READ_ADDRESS and frame.address == cjt.WILDCARD:
            return cjt.address_reply(meter_type, address, opts.preamble)
        if frame.address != address or frame.function != cjt.READ_DATA or len(frame.data) < 3:
            return None
        wire = frame.data[:2]
        di = (wire[::-1] if opts.di_order == "low-first" else wire).hex().upper()
        ser = frame.data[2]
        if m.mode == "exception":
            return cjt.error_reply(meter_type, address, ser, b"\x03\x00", opts.preamble)
        values = self._values(m, opts, di)
        if values is None:
            return cjt.error_reply(meter_type, address, ser, b"\x00\x00", opts.preamble)
        return cjt.read_reply(meter_type, address, di, ser, values, opts.di_order, opts.ser, opts.preamble)

    # -- values --------------------------------------------------------------------------

    def _values(self, m: SimMeter, opts: FrameOptions, di: str) -> bytes | None:
        points = [p for p in m.points if (p.di or "").upper() == di]
        if not points:
            return None
        size = max((p.at or 0) + parse_format(p.format or "")[0] + bool(p.unit_code) for p in points)
        if self.protocol == "cjt188" and di == cjt.DI_CURRENT:
            meter_type = int(opts.meter_type or "10", 16)
            size = max(size, cjt.HEAT_DATA if cjt.is_heat(meter_type) else cjt.WATER_GAS_DATA)
        out = bytearray(size)
        now = int(time.time() * 1000)
        for p in points:
            length, _ = parse_format(p.format or "")
            raw = int(m.raw_value(p.name, now))
            at = p.at or 0
            out[at : at + length] = int_to_bcd(raw, length, opts.value_order == "low-first", bool(p.signed))
            if p.unit_code:
                out[at + length] = cjt.unit_code_for(p.unit)
        return bytes(out)
