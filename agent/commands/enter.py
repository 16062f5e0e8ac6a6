"""`energy-agent enter`: seal a value no meter measures (coal received, output, output value)."""

from __future__ import annotations

import argparse
import sys
import time

from agent.commands._common import add_config_argument, load_or_exit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("code", help="data code PP-UU-EEEE-CCTTTT-DD")
    parser.add_argument("value", help="decimal value, e.g. 1140.10")
    parser.add_argument("--unit", required=True, help="unit, e.g. t, kWh, 10^4 CNY")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--period", metavar="YYYY-MM", help="a monthly value")
    when.add_argument("--day", metavar="YYYY-MM-DD", help="a daily value")
    parser.add_argument("--variety", default="", help="energy variety, e.g. raw_coal")
    parser.add_argument("--note", default="", help="free text kept with the value")
    parser.add_argument("--supersedes", default="", metavar="ID",
                        help="id of the manual entry this one corrects")


def run(args: argparse.Namespace) -> int:
    from agent.accounting.manual import ManualError, enter_value

    cfg = load_or_exit(args.config)
    try:
        id_, body, period = enter_value(
            cfg, args.code, args.value, args.unit, entered_ms=int(time.time() * 1000),
            month=args.period, day=args.day, note=args.note, supersedes=args.supersedes,
            variety=args.variety)
    except ManualError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sealed {id_}: {args.code} = {body['items'][0]['value']} {args.unit} for {period}")
    return 0
