"""`energy-agent probe METER`: read one meter once and print its values — for commissioning."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

from agent.commands._common import add_config_argument, load_or_exit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("meter", help="meter name from the config")


def run(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)
    names = [m.name for m in cfg.meter]
    if args.meter not in names:
        print(f"error: no meter named {args.meter!r} (meters: {', '.join(names) or 'none'})")
        return 2
    return asyncio.run(_probe(cfg, args.meter))


async def _probe(cfg, name: str) -> int:  # type: ignore[no-untyped-def]
    from agent.protocol.envelope import format_value
    from drivers.base import MeterError, Quality
    from drivers.factory import open_driver
    from drivers.planner import plan_reads

    meter = cfg.meter_named(name)
    bus = cfg.bus_named(meter.bus)
    from drivers.di_layout import plan_dis

    by_di = bus.kind in ("dlt645", "cjt188")
    plan = plan_dis(meter.points) if by_di else plan_reads(meter.points, meter.max_registers, meter.max_gap)
    print(f"meter {meter.name}: bus {bus.name} ({bus.kind}), {meter.station}, "
          f"{len(meter.points)} point(s) in {len(plan)} request(s)")
    driver = open_driver(bus)
    try:
        readings = await driver.read(meter)
    except MeterError as e:
        print(f"error: {e}")
        return 1
    finally:
        await driver.close()
    points = {p.name: p for p in meter.points}
    width = max(len(n) for n in points)
    failed = 0
    for r in readings:
        p = points[r.point]
        at = datetime.fromtimestamp(r.ts / 1000, cfg.tz).strftime("%H:%M:%S")
        if r.quality == Quality.GOOD:
            value = format_value(r.value, p.value_decimals)
            where = f"DI {p.di} {p.format}" if p.di else f"reg {p.register} {p.function} {p.type} {p.order}"
            print(f"  {r.point:<{width}}  {value:>16} {p.unit:<6} {p.kind:<13} {where}  {at}")
        else:
            failed += 1
            print(f"  {r.point:<{width}}  {'—':>16} {p.unit:<6} {Quality(r.quality).name.lower()}")
    for why in driver.last_failures(meter.name):
        print(f"  ! {why}")
    return 1 if failed == len(readings) else 0
