"""Interop with DL/T 645 code we did not write: the PyPI `dlt645` package (3.2.0, pinned in the
test extra). Our reader against its simulated meter, and its client against our simulated
meter, on a real pty pair (parity N: ptys and this package's defaults).

Found doing this: the package takes a meter address as the wire-order hex string
(`set_address("129078563412")` for the meter printed 123456789012); our config takes the
nameplate number and reverses it (DL/T 645-2007 §6: A0 is the low pair).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from drivers.base import Quality
from drivers.bcd import address_bytes
from drivers.di_layout import resolve_point
from drivers.dlt645 import Dlt645Driver
from drivers.model import BusConfig, MeterConfig, PointConfig
from hil.serial_pair import serial_pair
from hil.sim_di import DiLine, di_meter

dlt645 = pytest.importorskip("dlt645", reason="test extra: pip install -e '.[test]'")

NAMEPLATE = "123456789012"
WIRE_ORDER = address_bytes(NAMEPLATE, 6).hex()  # "129078563412": the package's convention
VALUES = {"00010000": 12345.67, "00020000": 234.56, "02010100": 229.5, "02020100": -1.234,
          "02030000": -12.3456, "02800002": 50.01}


def test_our_reader_against_their_meter() -> None:
    with serial_pair() as (meter_side, agent_side):
        server = dlt645.MeterServerService.new_rtu_server(meter_side, 8, 1, 9600, "N", 1.0)
        server.set_address(WIRE_ORDER)
        for di, value in VALUES.items():
            setter = server.set_00 if di.startswith("00") else server.set_02
            assert setter(int(di, 16), value)
        assert server.start()
        try:
            points = [resolve_point(PointConfig(name=f"p{di}", di=di), "dlt645", None) for di in VALUES]
            meter = MeterConfig(name="m", bus="b", address=NAMEPLATE)
            meter.points = points  # type: ignore[assignment]

            async def go() -> list:
                driver = Dlt645Driver(BusConfig(name="b", kind="dlt645", device=agent_side, parity="N",
                                                timeout=1.0, retries=1))
                try:
                    return list(await driver.read(meter))
                finally:
                    await driver.close()
            readings = asyncio.run(go())
        finally:
            server.stop()
    assert [r.quality for r in readings] == [Quality.GOOD] * len(VALUES)
    assert {r.point[1:]: r.value for r in readings} == pytest.approx(VALUES)


def test_their_client_reads_our_meter() -> None:
    points = [PointConfig(name="import_active_energy", di="00010000", unit="kWh", kind="counter"),
              PointConfig(name="voltage_a", di="02010100", unit="V"),
              PointConfig(name="current_a", di="02020100", unit="A"),
              PointConfig(name="frequency", di="02800002", unit="Hz")]
    sim = di_meter("m", NAMEPLATE, "dlt645", points)
    ready, stop = threading.Event(), threading.Event()
    with serial_pair() as (meter_side, agent_side):
        def serve() -> None:
            async def run() -> None:
                line = await DiLine(meter_side, [sim], "dlt645").start()
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.02)
                await line.stop()
            asyncio.run(run())
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert ready.wait(5)
        try:
            client = dlt645.MeterClientService.new_rtu_client(agent_side, 9600, 8, 1, "N", 1.0)
            assert client.connect()
            assert client.set_address(WIRE_ORDER)
            got = {}
            for p in sim.points:
                read = client.read_00 if p.di.startswith("00") else client.read_02
                item = read(int(p.di, 16))
                assert item is not None, p.name
                got[p.name] = (float(item.value), int(time.time() * 1000))
        finally:
            stop.set()
            t.join(5)
    for p in sim.points:
        value, ts = got[p.name]
        assert sim.matches(p.name, ts, f"{value:.{p.value_decimals}f}", 3000), (p.name, value)
