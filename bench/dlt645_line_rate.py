"""Requests per cycle and bus time versus the line-rate limit, DL/T 645-2007 at 2400 baud 8E1.

Four simulated DL/T 645 meters share one pty pair (hil/sim_di.py, in their own process); each
reply waits for what request and reply would take on a real 2400 8E1 line (11 bits a
character, both frames with their 4-byte FE preamble) plus a 50 ms meter turnaround, since a
pty has no baud rate. The Dlt645Driver reads 8 DIs per meter — one DI per request, the only
way most meters are read — and, for comparison, the same values with the three phase
voltages taken from the voltage block DI 0201FF00 (6 requests). The limit is
drivers/timing.di_request_seconds summed over the plan (what check-config prints).
Prints, never asserts. Run: .venv/bin/python bench/dlt645_line_rate.py [--cycles 3]

Recorded: see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.di_layout import plan_dis, resolve_point
from drivers.dlt645 import Dlt645Driver
from drivers.model import BusConfig, MeterConfig, PointConfig
from drivers.timing import DI_TURNAROUND_S, di_request_seconds
from hil.serial_pair import serial_pair

ADDRESSES = ["000000000001", "000000000002", "000000000003", "000000000004"]
SINGLE = [("import_active_energy", "00010000", 0), ("export_active_energy", "00020000", 0),
          ("voltage_a", "02010100", 0), ("voltage_b", "02010200", 0), ("voltage_c", "02010300", 0),
          ("current_a", "02020100", 0), ("active_power", "02030000", 0), ("power_factor", "02060000", 0)]
BLOCKS = [(n, "0201FF00", {"voltage_a": 0, "voltage_b": 2, "voltage_c": 4}[n]) if n.startswith("voltage")
          else (n, di, at) for n, di, at in SINGLE]
# The line being modelled. The pty itself runs parity N: ptys may refuse even parity.
LINE = BusConfig(name="dlt-1", kind="dlt645", device="/dev/null", baud=2400, parity="E")


def points(spec: list[tuple[str, str, int]]) -> list[PointConfig]:
    out = []
    for name, di, at in spec:
        p = resolve_point(PointConfig(name=name, di=di, at=at), "dlt645", None)
        assert isinstance(p, PointConfig), p
        out.append(p)
    return out


def run_meters(port: str, ready: Any) -> None:
    """The four simulated meters (their own process, so their CPU is not the driver's)."""
    from hil.sim_di import DiLine, di_meter

    async def main() -> None:
        # Every meter answers both the single DIs and the voltage block.
        spec = [PointConfig(name=n, di=di, at=at) for n, di, at in SINGLE] + [
            PointConfig(name=f"block_{n}", di=di, at=at) for n, di, at in BLOCKS if di == "0201FF00"]
        meters = [di_meter(f"m{i}", a, "dlt645", spec) for i, a in enumerate(ADDRESSES)]
        await DiLine(port, meters, "dlt645", baud=2400, char_bits=11, line_rate=True,
                     turnaround=DI_TURNAROUND_S).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def meters(spec: list[tuple[str, str, int]]) -> list[MeterConfig]:
    out = []
    for i, address in enumerate(ADDRESSES):
        m = MeterConfig(name=f"m{i}", bus="dlt-1", address=address)
        m.points = points(spec)
        out.append(m)
    return out


async def cycles(device: str, ms: list[MeterConfig], n: int) -> tuple[float, int]:
    bus = BusConfig(name="dlt-1", kind="dlt645", device=device, baud=2400, parity="N",
                    timeout=1.0, retries=0)
    driver = Dlt645Driver(bus)
    try:
        await driver.read(ms[0])  # open the port outside the measured window
        before = driver.requests_sent
        start = time.perf_counter()
        for _ in range(n):
            for m in ms:
                readings = await driver.read(m)
                if any(r.value is None for r in readings):
                    raise SystemExit(f"bad read: {readings}")
        return (time.perf_counter() - start) / n, (driver.requests_sent - before) // n
    finally:
        await driver.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=3, help="bus cycles per mode")
    args = ap.parse_args()
    print(f"line modelled: {LINE.baud} {LINE.data_bits}{LINE.parity}{LINE.stop_bits}, turnaround "
          f"{DI_TURNAROUND_S * 1000:.0f} ms, 4-byte FE preamble both ways; {len(ADDRESSES)} meters × "
          f"{len(SINGLE)} values")
    rows = []
    with serial_pair() as (meter_side, agent_side):
        ready = multiprocessing.Event()
        sim = multiprocessing.Process(target=run_meters, args=(meter_side, ready), daemon=True)
        sim.start()
        try:
            if not ready.wait(10):
                raise SystemExit("simulated meters did not start")
            for mode, spec in (("one DI per value", SINGLE), ("voltage block", BLOCKS)):
                ms = meters(spec)
                limit = sum(di_request_seconds(LINE, r.data_bytes) for m in ms for r in plan_dis(m.points))
                per_cycle, requests = asyncio.run(cycles(agent_side, ms, args.cycles))
                rows.append(f"{mode:<17} {requests:>8} {per_cycle:>9.2f} {limit:>9.2f} "
                            f"{requests / per_cycle:>6.2f} {requests / limit:>10.2f} "
                            f"{100 * limit / per_cycle:>8.1f} %")
        finally:
            sim.terminate()
            sim.join(5)
    print(f"{'mode':<17} {'req/cyc':>8} {'cycle s':>9} {'limit s':>9} {'req/s':>6} {'limit req/s':>10} "
          f"{'of limit':>9}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
