"""`energy-agent enter`: seal a value no meter measures (coal received, output, output value)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

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
    from agent.accounting.manual import ManualError, manual_body, seal_manual
    from agent.protocol.sealer import Sealer
    from agent.protocol.signing import KeyFileError, load_signer
    from buffer.store import Store, StoreError

    cfg = load_or_exit(args.config)
    try:
        body, period = manual_body(
            args.code, args.value, args.unit, tz=cfg.tz, entered_ms=int(time.time() * 1000),
            month=args.period, day=args.day, note=args.note, supersedes=args.supersedes,
            variety=args.variety)
        # An operator's command: root may use the key the service user owns (run may not).
        signer = load_signer(cfg.signing.key_file, cfg.signing.key_id, any_owner=os.geteuid() == 0)
        store = Store(Path(cfg.agent.data_dir) / "agent.db")
    except (ManualError, KeyFileError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        seq = seal_manual(store, Sealer(cfg, store, signer), body, period)
        row = next(r for r in store.outbox.envelopes("manual", period, period) if r.seq == seq)
    except (ManualError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"sealed {row.id}: {args.code} = {body['items'][0]['value']} {args.unit} for {period}")
    return 0
