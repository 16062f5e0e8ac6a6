"""`energy-agent probe METER`: read one meter once and print its values — for commissioning."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from typing import TYPE_CHECKING

from agent.commands._common import add_config_argument, load_or_exit

if TYPE_CHECKING:
    from drivers.model import PointConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("meter", help="meter name from the config")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)
    names = [m.name for m in cfg.meter]
    if args.meter not in names:
        print(f"error: no meter named {args.meter!r} (meters: {', '.join(names) or 'none'})")
        return 2
    return asyncio.run(_probe(cfg, args.meter, args.json))


async def _probe(cfg, name: str, as_json: bool = False) -> int:  # type: ignore[no-untyped-def]
    from agent.protocol.envelope import format_value
    from drivers.base import MeterError, Quality
    from drivers.di_layout import describe_di_plan, plan_dis
    from drivers.factory import open_driver
    from drivers.model import BUS_PROTOCOL
    from drivers.planner import describe_plan, plan_reads

    meter = cfg.meter_named(name)
    bus = cfg.bus_named(meter.bus)
    if BUS_PROTOCOL[bus.kind] != "modbus":  # DL/T 645, CJ/T 188: one DI per request
        requests = describe_di_plan(plan_dis(meter.points))
    else:
        requests = describe_plan(plan_reads(meter.points, meter.max_registers, meter.max_gap))
    head = {"meter": meter.name, "bus": bus.name, "kind": bus.kind,
            "unit": meter.unit if meter.address is None else None, "address": meter.address,
            "requests": requests}
    if not as_json:
        print(f"meter {meter.name}: bus {bus.name} ({bus.kind}), {meter.station}, "
              f"{len(meter.points)} point(s) in {len(requests)} request(s)")
    driver = open_driver(bus)
    try:
        readings = await driver.read(meter)
    except MeterError as e:
        if as_json:
            print(json.dumps({**head, "error": str(e), "points": []}, indent=2, ensure_ascii=False))
        else:
            print(f"error: {e}")
        return 1
    finally:
        await driver.close()
    points = {p.name: p for p in meter.points}
    if as_json:
        read_plan = getattr(driver, "read_plan", lambda _name: None)(meter.name)
        rows = [{"point": r.point, "value": format_value(r.value, points[r.point].value_decimals)
                 if r.quality == Quality.GOOD else None, "unit": points[r.point].unit,
                 "quality": Quality(r.quality).name.lower(), "ts_ms": r.ts,
                 **_where(points[r.point])}
                for r in readings]
        why = driver.last_failures(meter.name)
        print(json.dumps({**head, "read_plan": read_plan, "failures": why, "points": rows},
                         indent=2, ensure_ascii=False))
        return 1 if all(r["value"] is None for r in rows) else 0
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


def _where(p: PointConfig) -> dict[str, object]:
    """Where a point is read from: its register (Modbus) or data identifier (DL/T 645, CJ/T 188)."""
    if p.di is not None:
        return {"di": p.di, "at": p.at, "format": p.format}
    return {"register": p.register, "function": p.function, "type": p.type, "order": p.order}
