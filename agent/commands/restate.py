"""`energy-agent restate`: state a sealed day or month again, as a new signed envelope that
names the one it supersedes and why (the daemon does the same by itself for a late manual entry
or meter replacement)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agent.commands._common import add_config_argument, load_or_exit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--day", metavar="YYYY-MM-DD", help="a sealed day (the month follows)")
    which.add_argument("--month", metavar="YYYY-MM", help="a sealed month")
    parser.add_argument("--reason", required=True, help="why, kept in the envelope (≤ 500 chars)")


def run(args: argparse.Namespace) -> int:
    from agent.accounting.reports import Reporter
    from agent.accounting.restate import RestateError, restate_period
    from agent.protocol.sealer import Sealer
    from agent.protocol.signing import KeyFileError, load_signer
    from buffer.store import Store, StoreError

    cfg = load_or_exit(args.config)
    if not args.reason.strip():
        print("error: --reason: say why the period is restated", file=sys.stderr)
        return 2
    try:
        signer = load_signer(cfg.signing.key_file, cfg.signing.key_id)
        store = Store(Path(cfg.agent.data_dir) / "agent.db")
    except (KeyFileError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rep = Reporter(cfg, store, Sealer(cfg, store, signer))
        type_, period = ("daily", args.day) if args.day else ("monthly", args.month)
        seqs = restate_period(rep, type_, period, args.reason.strip(), int(time.time() * 1000))
    except (RestateError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if not seqs:
        print(f"{period}: every figure is as sealed; nothing restated")
    else:
        print(f"restated {period}: {len(seqs)} envelope(s), seq {', '.join(map(str, seqs))}")
    return 0
