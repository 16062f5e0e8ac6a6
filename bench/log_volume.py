"""Log bytes per day on a gateway: 100 meters, one dead, one refusing a point, one bus overrunning.

    PYTHONPATH=. .venv/bin/python bench/log_volume.py [--hours 24] [--poll 60]

Real parts where they decide what is logged: the agent's BusPoller, Modbus TCP driver and
condition log, against pymodbus servers on loopback (10 buses of 10 meters; on bus 0 unit 5
answers exception 2 for its power-factor register, inside the merged request; on bus 1 unit 7
never answers). Simulated: the clock (the poller's, the driver's and the condition log's all
move by `--poll` per cycle, so a day takes a minute) and the scheduler's overrun of bus 2 —
every other tick finds its previous cycle still running, as a too-slow line would.

Every line goes through the daemon's own log format with the timestamp it carries when not
under journald. Prints the lines and bytes per simulated day, and the lines themselves with
--show. The figure is recorded in docs/operations.md (§4, log volume) and bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pymodbus.constants import ExcCodes  # noqa: E402
from pymodbus.server import ModbusTcpServer  # noqa: E402
from pymodbus.simulator import DataType, SimData, SimDevice  # noqa: E402

from agent.cli import log_format  # noqa: E402
from agent.runtime.conditions import Conditions, Overruns  # noqa: E402
from agent.runtime.poller import BusPoller  # noqa: E402
from buffer.store import MeterStatus  # noqa: E402
from drivers.base import Reading  # noqa: E402
from drivers.codec import encode  # noqa: E402
from drivers.modbus_tcp import ModbusTcpDriver  # noqa: E402
from drivers.model import BusConfig, MeterConfig, PointConfig  # noqa: E402
from hil.broker import free_port  # noqa: E402

BUSES, PER_BUS = 10, 10
REFUSING = (0, 5)  # (bus, unit) refusing register 10 (power factor)
DEAD = (1, 7)  # (bus, unit) that never answers
OVERRUNNING = 2  # bus whose every other tick is skipped
POINTS = [
    PointConfig(name="import_active_energy", register=0, type="u32", scale=0.01, kind="counter"),
    PointConfig(name="power_factor", register=10, type="s16", scale=0.001),
    PointConfig(name="voltage_a", register=20, type="u16", scale=0.1),
]
REGISTERS = [*encode(1_234_567, "u32", "ABCD"), *[0] * 8, 990, *[0] * 9, 2301]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def action(bus: int, unit: int) -> Any:
    async def act(_fc: int, _start: int, address: int, count: int, *_: Any) -> ExcCodes | None:
        if (bus, unit) == DEAD:
            await asyncio.sleep(0.2)  # past the driver's timeout: silence
        elif (bus, unit) == REFUSING and address <= 10 < address + count:
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    return act


async def run(hours: float, poll: float, show: bool) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(log_format()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    clock = Clock()
    servers, pollers = [], []

    async def sink(readings: list[Sequence[Reading]], statuses: list[MeterStatus]) -> None:
        pass

    for b in range(BUSES):
        port = free_port()
        devices = [SimDevice(u, simdata=[SimData(0, values=REGISTERS, datatype=DataType.REGISTERS)],
                             action=action(b, u)) for u in range(1, PER_BUS + 1)]
        server = ModbusTcpServer(devices, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        servers.append(server)
        bus = BusConfig(name=f"lan-{b}", kind="modbus-tcp", host="127.0.0.1", port=port,
                        timeout=0.1, retries=0)
        meters = []
        for u in range(1, PER_BUS + 1):
            m = MeterConfig(name=f"m{b}-{u}", bus=bus.name, unit=u)
            m.points = POINTS
            m.max_registers, m.max_gap, m.pause_ms, m.connect_pause_ms = 125, 10, 0, 0
            meters.append(m)
        driver = ModbusTcpDriver(bus)
        driver.clock = clock
        pollers.append(BusPoller(bus, meters, driver, sink, clock=clock))
    overruns = Overruns(Conditions(logging.getLogger("agent.runtime.app"), clock=clock), poll)

    cycles = int(hours * 3600 / poll)
    started = time.monotonic()
    try:
        for tick in range(cycles):
            clock.now += poll
            running = []
            for p in pollers:
                if p.bus.name == f"lan-{OVERRUNNING}" and tick % 2:
                    overruns.skipped(p.bus.name)
                    continue
                overruns.on_time(p.bus.name)
                running.append(p.poll_once())
            await asyncio.gather(*running)
    finally:
        for p in pollers:
            await p.driver.close()
        for s in servers:
            await s.shutdown()
    text = stream.getvalue()
    lines = text.splitlines()
    scale = 24 / hours
    if show:
        print(text, end="")
    print(f"{cycles} cycles of {BUSES * PER_BUS} meters, poll every {poll:g} s, {hours:g} h simulated "
          f"in {time.monotonic() - started:.0f} s")
    print(f"log: {len(lines)} lines, {len(text.encode())} bytes "
          f"= {len(lines) * scale:.0f} lines, {len(text.encode()) * scale / 1024:.1f} KiB per day")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    ap.add_argument("--poll", type=float, default=60.0, help="poll interval in seconds (default 60)")
    ap.add_argument("--show", action="store_true", help="print the log lines too")
    a = ap.parse_args()
    asyncio.run(run(a.hours, a.poll, a.show))


if __name__ == "__main__":
    main()
