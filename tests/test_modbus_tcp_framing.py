"""Modbus TCP framing: a reply that is not exactly the answer to the request sent is a gap.

The meter here is a real TCP server speaking MBAP by hand, so it can misbehave the way a
faulty TCP/RTU gateway or proxy does: cut a reply short and splice it with the next one, stamp
transaction id 0, send a stale frame first. Before the strict framer, pymodbus took the first
`length` bytes of a spliced reply (head of one frame, start of the next) and its registers
were stored as GOOD values that no meter ever sent.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.poller import BusPoller
from buffer.store import Store
from drivers.base import Quality
from drivers.modbus_tcp import ModbusTcpDriver
from drivers.model import BusConfig, MeterConfig, PointConfig

POINTS = 6  # six u16 registers per reply: 21-byte frames, many ways to cut one


class GatewayMeter:
    """Answers every read with fresh values; every `every`-th reply is damaged by `fault`."""

    def __init__(self, fault: str, every: int = 3) -> None:
        self.fault = fault
        self.every = every
        self.replies = 0
        self.sent: set[tuple[int, ...]] = set()  # every register tuple actually sent
        self.last_frame = b""
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def _frame(self, tid: int, unit: int, fc: int, count: int) -> bytes:
        k = self.replies
        # Values a cut-and-shift cannot reproduce by accident: a tag, the reply number, zeros
        # (real meters read many zero registers, the bytes a misframed header is made of).
        regs = ((0xA000 + k) & 0xFFFF, k, 0, 1, 0, (k * 7919) & 0xFFFF)[:count]
        self.sent.add(regs)
        body = struct.pack(">BB", fc, 2 * count) + struct.pack(f">{count}H", *regs)
        return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                fc, _start, count = struct.unpack(">BHH", (await reader.readexactly(length - 1))[:5])
                self.replies += 1
                frame = self._frame(tid, unit, fc, count)
                damaged = self.replies % self.every == 0
                cut = 9 + self.replies % (len(frame) - 9)  # past the byte count, inside the data
                if damaged and self.fault == "spliced":
                    writer.write(frame[:cut] + frame)
                elif damaged and self.fault == "spliced-late":
                    writer.write(frame[:cut])
                    await writer.drain()
                    await asyncio.sleep(0.01)  # the rest arrives as a segment of its own
                    writer.write(frame)
                elif damaged and self.fault == "tid-0":
                    writer.write(b"\x00\x00" + frame[2:])
                elif damaged and self.fault == "stale-first":
                    writer.write(self.last_frame + frame)
                elif damaged and self.fault == "long-length":
                    # MBAP length one more than the PDU: swallows a byte of whatever follows.
                    writer.write(frame[:4] + struct.pack(">H", len(frame) - 5) + frame[6:] + b"\x00")
                else:
                    writer.write(frame)
                self.last_frame = frame
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def six_point_meter() -> MeterConfig:
    m = MeterConfig(name="gw-meter", bus="lan-1", unit=1)
    m.points = [PointConfig(name=f"r{i}", register=i) for i in range(POINTS)]
    m.max_registers, m.max_gap, m.pause_ms, m.connect_pause_ms = 125, 10, 0, 0
    return m


@pytest.mark.parametrize("fault", ["spliced", "spliced-late", "tid-0", "stale-first", "long-length"])
def test_a_misframed_reply_is_a_corrupt_gap_never_a_value(fault: str) -> None:
    async def main() -> dict[str, Any]:
        meter = GatewayMeter(fault)
        port = await meter.start()
        bus = BusConfig(name="lan-1", kind="modbus-tcp", host="127.0.0.1", port=port,
                        timeout=0.1, retries=0)
        driver = ModbusTcpDriver(bus)
        m = six_point_meter()
        good = wrong = corrupt = 0
        try:
            for _ in range(30):
                rows = await driver.read(m)
                qualities = {r.quality for r in rows}
                if qualities == {Quality.GOOD}:
                    values = tuple(int(r.value) for r in rows if r.value is not None)
                    if values in meter.sent:
                        good += 1
                    else:
                        wrong += 1
                elif qualities == {Quality.CORRUPT}:
                    corrupt += 1
                    assert "broke Modbus TCP framing" in driver.last_failures("gw-meter")[0]
        finally:
            await driver.close()
            meter.close()
        return {"good": good, "wrong": wrong, "corrupt": corrupt, "connects": driver.connects}

    got = asyncio.run(main())
    # Every third reply damaged: 10 gaps, 20 good values, a fresh connection after each gap
    # (the last one is the 30th read: nothing reconnects after it).
    assert got == {"good": 20, "wrong": 0, "corrupt": 10, "connects": 10}, got


def test_the_spliced_meter_stores_no_good_value_through_the_poller(tmp_path: Path) -> None:
    """The daemon's path: bus poller, real driver, readings committed to the real store and
    read back. Every GOOD sample in the store is a value the meter sent, in its own reply."""
    store = Store(tmp_path / "agent.db")

    async def main() -> GatewayMeter:
        meter = GatewayMeter("spliced")
        port = await meter.start()
        bus = BusConfig(name="lan-1", kind="modbus-tcp", host="127.0.0.1", port=port,
                        timeout=0.1, retries=0)

        async def sink(polls: list[Any], statuses: list[Any]) -> None:
            store.readings.add_encoded(store.readings.encode_polls(polls), statuses)

        driver = ModbusTcpDriver(bus)
        poller = BusPoller(bus, [six_point_meter()], driver, sink)
        try:
            for _ in range(30):
                await poller.poll_once()
        finally:
            await driver.close()
            meter.close()
        return meter

    meter = asyncio.run(main())
    rows = store.readings.readings_after(0, 1000)
    store.close()
    by_poll: dict[int, list[Any]] = {}  # one stored row per meter poll
    for row_id, r in rows:
        by_poll.setdefault(row_id, []).append(r)
    good = [tuple(int(r.value) for r in poll) for poll in by_poll.values()
            if all(r.quality == Quality.GOOD for r in poll)]
    gaps = [poll for poll in by_poll.values() if all(r.quality == Quality.CORRUPT and r.value is None
                                                      for r in poll)]
    assert len(rows) == 30 * POINTS
    assert len(good) == 20 and all(values in meter.sent for values in good)
    assert len(gaps) == 10
