"""`energy-agent check-config`: validate a config and show what polling it will cost."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.commands._common import add_config_argument, load_or_exit
from agent.config.destinations import broker_list, wanted_types
from agent.config.schema import MqttDestination


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("file", nargs="?", help="config file (overrides -c)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.file or args.config, preflight=True)
    report = collect(cfg)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(cfg, report)
    return 0


def collect(cfg: Any) -> dict[str, Any]:
    """The config's summary, each bus's read plans and timing, and the warnings."""
    from drivers.di_layout import describe_di_plan, plan_dis
    from drivers.model import BUS_PROTOCOL
    from drivers.planner import describe_plan, plan_meter
    from drivers.timing import cycle_seconds, dead_meter_seconds

    interval = cfg.schedule.poll_interval
    buses = []
    warnings = []
    for bus in cfg.bus:
        meters = []
        total = 0.0
        by_di = BUS_PROTOCOL[bus.kind] != "modbus"  # DL/T 645, CJ/T 188: one DI per request
        for m in (m for m in cfg.meter if m.bus == bus.name):
            requests = describe_di_plan(plan_dis(m.points)) if by_di else describe_plan(plan_meter(m))
            t = cycle_seconds(bus, m)
            total += t
            meters.append({"meter": m.name, "unit": None if by_di else m.unit, "address": m.address,
                           "station": m.station, "profile": m.profile, "points": len(m.points),
                           "requests": requests, "cycle_ms": round(t * 1000)})
        dead = dead_meter_seconds(bus)
        serial = f"{bus.device} {bus.baud} {bus.data_bits}{bus.parity}{bus.stop_bits}"
        buses.append({"bus": bus.name, "kind": bus.kind,
                      "where": f"{bus.host}:{bus.port}" if bus.host else serial,
                      "meters": meters, "cycle_s": round(total, 3), "silent_meter_s": dead,
                      "offline_after": bus.offline_after})
        if total > interval:
            warnings.append(f"bus {bus.name}: one cycle needs ~{total:.2f} s but poll_interval is "
                            f"{interval:g} s — raise poll_interval, split the line, or raise the baud rate")
        elif total + dead > interval:
            warnings.append(f"bus {bus.name}: a silent meter would stretch a cycle past "
                            f"poll_interval ({total + dead:.2f} s > {interval:g} s) until it goes offline")
    return {
        "config": str(cfg.source), "ok": True, "gateway": cfg.agent.gateway,
        "enterprise": cfg.agent.enterprise, "timezone": cfg.agent.timezone,
        "destinations": [_destination(d) for d in cfg.destination],
        "poll_interval": interval, "points": sum(len(m.points) for m in cfg.meter),
        "buses": buses, "warnings": warnings,
    }


def _destination(d: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": d.name, "types": sorted(wanted_types(d))}
    if isinstance(d, MqttDestination):
        out.update(kind="mqtt", brokers=[f"{h}:{p}" for h, p in broker_list(d)], ack=d.ack)
    else:
        out.update(kind="province-https", url=d.url)
    return out


def print_report(cfg: Any, r: dict[str, Any]) -> None:
    interval = r["poll_interval"]
    print(f"{r['config']}: OK")
    print(f"gateway {r['gateway']}, enterprise {r['enterprise']}, timezone {r['timezone']}")
    for d in r["destinations"]:
        types = ", ".join(d["types"])
        if d["kind"] == "mqtt":
            print(f"destination {d['name']} (mqtt {', '.join(d['brokers'])}, ack {d['ack']}): {types}")
        else:
            print(f"destination {d['name']} (province-https {d['url']}): {types}")
    print(f"{len(cfg.bus)} bus(es), {len(cfg.meter)} meter(s), {r['points']} point(s); "
          f"poll every {interval:g} s")
    for b in r["buses"]:
        print(f"bus {b['bus']} ({b['kind']} {b['where']}): {len(b['meters'])} meter(s)")
        for m in b["meters"]:
            print(f"  meter {m['meter']} {m['station']}{' profile ' + m['profile'] if m['profile'] else ''}: "
                  f"{m['points']} point(s) in {len(m['requests'])} request(s), ~{m['cycle_ms']:.0f} ms per cycle")
            for line in m["requests"]:
                print(f"    {line}")
        total = b["cycle_s"]
        print(f"  bus time per cycle ~{total:.3f} s of {interval:g} s "
              f"({100 * total / interval:.0f} %); a silent meter costs up to {b['silent_meter_s']:.1f} s "
              f"until it is taken offline after {b['offline_after']} cycle(s)")
    for w in r["warnings"]:
        print(f"warning: {w}")
