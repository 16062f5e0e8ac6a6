"""`python -m hil`: run a scenario, or run the platform simulator on its own.

    python -m hil run hil/scenarios/normal-hour.toml [--short] [--workdir DIR]
    python -m hil platform --port 1883 --gateway E/G=BASE64 [--db platform.db] [--no-ack]
    python -m hil run hil/scenarios/destinations/province-down.toml [--short]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario and print its report")
    run.add_argument("scenario", help="a TOML file under hil/scenarios/")
    run.add_argument("--short", action="store_true", help="the CI version (tens of seconds)")
    run.add_argument("--workdir", help="keep configs, logs and databases here")
    plat = sub.add_parser("platform", help="run the platform simulator against a broker")
    plat.add_argument("--host", default="127.0.0.1")
    plat.add_argument("--port", type=int, required=True)
    plat.add_argument("--gateway", action="append", default=[], metavar="E/G=BASE64",
                      help="register a raw Ed25519 public key (base64) for gateway G of "
                           "enterprise E; repeatable, one key set per gateway")
    plat.add_argument("--db", default="platform.db")
    plat.add_argument("--prefix", default="energy")
    plat.add_argument("--no-ack", action="store_true", help="never send platform acks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.command == "run":
        return _run(args)
    return _platform(args)


def _run(args: argparse.Namespace) -> int:
    from hil.scenario import Scenario, run_scenario

    work = Path(args.workdir) if args.workdir else None
    if work:
        work.mkdir(parents=True, exist_ok=True)
    if Path(args.scenario).resolve().parent.name == "destinations":
        return _drill(args, work)
    scn = Scenario.load(args.scenario, short=args.short)
    report = asyncio.run(run_scenario(scn, work))
    print(report.text())
    return 0 if not report.failures else 1


def _drill(args: argparse.Namespace, work: Path | None) -> int:
    """hil/scenarios/destinations/*.toml: two destinations in simulated time."""
    import tempfile

    from hil.destinations_drill import Drill, run_drill

    drill = Drill.load(args.scenario, short=args.short)
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(run_drill(drill, work or Path(tmp)))
    print(report.text())
    bad = any(r.missing or r.wrong or r.duplicates for r in report.results.values())
    return 1 if bad or not report.drained else 0


def _platform(args: argparse.Namespace) -> int:
    from hil.platform_sim import PlatformSim, key_id

    keys: dict[tuple[str, str], dict[str, bytes]] = {}
    for item in args.gateway:
        who, _, b64 = item.partition("=")
        enterprise, _, gateway = who.partition("/")
        raw = base64.b64decode(b64)
        keys.setdefault((enterprise, gateway), {})[key_id(raw)] = raw
    sim = PlatformSim(args.port, keys, args.db, prefix=args.prefix, ack=not args.no_ack,
                      host=args.host).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"platform sim on {args.host}:{args.port}, gateways {len(keys)}, ack key "
          f"{base64.b64encode(sim.ack_public_raw).decode()} (kid {sim.ack_kid}), "
          f"storing into {args.db}", file=sys.stderr)
    done.wait()
    c = sim.counters
    sim.stop()
    print(f"accepted {c.accepted}, duplicates {c.duplicates}, rejected {c.rejected}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
