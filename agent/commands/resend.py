"""`energy-agent resend`: list the envelopes set aside as undeliverable, or queue some again."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, tzinfo
from pathlib import Path

from agent.commands._common import add_config_argument, load_or_exit
from buffer.names import MQTT

DESTINATION = MQTT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("seq", nargs="*", type=int,
                        help="seqs to send again, byte-identical; none: list what was set aside")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from buffer.store import Store, StoreError

    cfg = load_or_exit(args.config)
    path = Path(cfg.agent.data_dir) / "agent.db"
    try:
        store = Store(path, readonly=not args.seq)
        try:
            if not args.seq:
                dead = store.outbox.rejected(DESTINATION)
                if args.json:
                    print(json.dumps({"set_aside": [{"seq": seq, "reason": reason, "at_ms": ts}
                                                    for seq, reason, ts in dead]}, indent=2,
                                     ensure_ascii=False))
                    return 0
                return _list(dead, cfg.tz)
            done = store.outbox.requeue(DESTINATION, args.seq)
        finally:
            store.close()
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = sorted(set(args.seq) - set(done))
    if args.json:
        print(json.dumps({"queued": list(done), "not_set_aside": missing}, indent=2))
        return 1 if missing else 0
    for seq in done:
        print(f"seq {seq}: queued again; the running agent sends it within seconds")
    for seq in missing:
        print(f"seq {seq}: not set aside (delivered, pending, corrupt or unknown): nothing to do",
              file=sys.stderr)
    return 1 if missing else 0


def _list(dead: list[tuple[int, str, int]], tz: tzinfo) -> int:
    if not dead:
        print("no envelopes set aside")
        return 0
    for seq, reason, ts_ms in dead:
        when = datetime.fromtimestamp(ts_ms / 1000, tz)
        print(f"seq {seq}  {when:%Y-%m-%d %H:%M:%S}  {reason}")
    return 0
