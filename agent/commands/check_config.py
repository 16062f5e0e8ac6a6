"""`energy-agent check-config`: validate a config and show what polling it will cost."""

from __future__ import annotations

import argparse

from agent.commands._common import add_config_argument, load_or_exit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("file", nargs="?", help="config file (overrides -c)")


def run(args: argparse.Namespace) -> int:
    from drivers.planner import describe_plan, plan_meter
    from drivers.timing import cycle_seconds, dead_meter_seconds

    cfg = load_or_exit(args.file or args.config, preflight=True)
    interval = cfg.schedule.poll_interval
    print(f"{cfg.source}: OK")
    print(
        f"gateway {cfg.agent.gateway}, enterprise {cfg.agent.enterprise}, "
        f"timezone {cfg.agent.timezone}, platform {cfg.platform.host}:{cfg.platform.port} "
        f"(ack {cfg.platform.ack})"
    )
    print(f"{len(cfg.bus)} bus(es), {len(cfg.meter)} meter(s), "
          f"{sum(len(m.points) for m in cfg.meter)} point(s); poll every {interval:g} s")
    too_slow = 0
    for bus in cfg.bus:
        meters = [m for m in cfg.meter if m.bus == bus.name]
        serial = f"{bus.device} {bus.baud} {bus.data_bits}{bus.parity}{bus.stop_bits}"
        where = f"{bus.host}:{bus.port}" if bus.host else serial
        print(f"bus {bus.name} ({bus.kind} {where}): {len(meters)} meter(s)")
        total = 0.0
        for m in meters:
            plan = plan_meter(m)
            t = cycle_seconds(bus, m)
            total += t
            print(f"  meter {m.name} unit {m.unit}{' profile ' + m.profile if m.profile else ''}: "
                  f"{len(m.points)} point(s) in {len(plan)} request(s), ~{t * 1000:.0f} ms per cycle")
            for line in describe_plan(plan):
                print(f"    {line}")
        dead = dead_meter_seconds(bus)
        print(f"  bus time per cycle ~{total:.3f} s of {interval:g} s "
              f"({100 * total / interval:.0f} %); a silent meter costs up to {dead:.1f} s "
              f"until it is taken offline after {bus.offline_after} cycle(s)")
        if total > interval:
            too_slow += 1
            print(f"warning: bus {bus.name}: one cycle needs ~{total:.2f} s but poll_interval is "
                  f"{interval:g} s — raise poll_interval, split the line, or raise the baud rate")
        elif total + dead > interval:
            print(f"warning: bus {bus.name}: a silent meter would stretch a cycle past "
                  f"poll_interval ({total + dead:.2f} s > {interval:g} s) until it goes offline")
    return 0
