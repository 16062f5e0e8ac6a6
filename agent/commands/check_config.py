"""`energy-agent check-config`: validate a config and show what polling it will cost."""

from __future__ import annotations

import argparse

from agent.commands._common import add_config_argument, load_or_exit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("file", nargs="?", help="config file (overrides -c)")


def run(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.file or args.config)
    print(f"{cfg.source}: OK")
    print(
        f"gateway {cfg.agent.gateway}, enterprise {cfg.agent.enterprise}, "
        f"timezone {cfg.agent.timezone}, platform {cfg.platform.host}:{cfg.platform.port} "
        f"(ack {cfg.platform.ack})"
    )
    print(f"{len(cfg.bus)} bus(es), {len(cfg.meter)} meter(s), "
          f"{sum(len(m.points) for m in cfg.meter)} point(s); poll every {cfg.schedule.poll_interval:g} s")
    for bus in cfg.bus:
        meters = [m for m in cfg.meter if m.bus == bus.name]
        serial = f"{bus.device} {bus.baud} {bus.data_bits}{bus.parity}{bus.stop_bits}"
        where = f"{bus.host}:{bus.port}" if bus.host else serial
        print(f"bus {bus.name} ({bus.kind} {where}): {len(meters)} meter(s)")
        for m in meters:
            print(f"  meter {m.name} unit {m.unit}{' profile ' + m.profile if m.profile else ''}: "
                  f"{len(m.points)} point(s)")
    return 0
