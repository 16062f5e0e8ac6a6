"""`energy-agent replace-meter`: record a meter swap so its counter jump is not consumption."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.commands._common import add_config_argument, load_or_exit
from agent.config.destinations import destination_types


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("meter", help="meter name in the config")
    parser.add_argument("point", help="counter point name")
    parser.add_argument("--old-final", required=True, help="last value of the old meter")
    parser.add_argument("--new-initial", required=True, help="first value of the new meter")
    parser.add_argument("--at", required=True, metavar="TIME",
                        help="when the old meter stopped counting: YYYY-MM-DDTHH:MM local time")


def run(args: argparse.Namespace) -> int:
    from agent.accounting.manual import ManualError, parse_time, record_replacement, replacement_event
    from buffer.store import Store, StoreError

    cfg = load_or_exit(args.config)
    try:
        data = replacement_event(cfg, args.meter, args.point, args.old_final, args.new_initial,
                                 parse_time(args.at, cfg.tz))
        store = Store(Path(cfg.agent.data_dir) / "agent.db", destination_types(cfg))
        try:
            event = record_replacement(store, data)
        finally:
            store.close()
    except (ManualError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"recorded replacement #{event}: {args.meter}.{args.point} {data['old_final']} → "
          f"{data['new_initial']} at {args.at}; periods not yet sealed will count it")
    return 0
