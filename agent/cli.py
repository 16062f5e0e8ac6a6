"""The `energy-agent` command: one entry point, one module per subcommand under agent/commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from agent import __version__

# name -> (module under agent.commands, one-line help). Modules are imported only when chosen,
# so `energy-agent status` does not pay for pymodbus or paho.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "run the daemon: poll, store, seal, upload"),
    "check-config": ("check_config", "validate a config file and print the read plan"),
    "probe": ("probe", "read one meter once and print its values with units"),
    "status": ("status", "per-meter health, today's completeness, backlog and last upload"),
    "keygen": ("keygen", "create the Ed25519 signing key; print the public key and key id"),
    "scan": ("scan", "find responding meters on a bus and identify their profiles"),
    "enter": ("enter", "seal a value no meter measures (coal received, output, output value)"),
    "export": ("export", "write a day's or month's report as CSV, sealed or not yet"),
    "restate": ("restate", "state a sealed day or month again (supersedes it, says why)"),
    "replace-meter": ("replace_meter", "record a meter replacement (old final, new initial value)"),
    "resend": ("resend", "list envelopes set aside as undeliverable, or queue them again"),
    "serve": ("serve", "the energy manager's web page and JSON endpoints (a process of its own)"),
    "web-passwd": ("web_passwd", "set the web page's login (password hash file, mode 0600)"),
    "demo": ("demo", "the whole chain on this machine: simulated meters, broker, platform, agent"),
}

DEFAULT_CONFIG = "/etc/energy-agent/agent.toml"


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with `chosen` one whose other subcommands carry only their names
    and help: their modules (scan, demo, export …) need not be imported to run the daemon."""
    parser = argparse.ArgumentParser(prog="energy-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"energy-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if chosen is None or name == chosen:
            importlib.import_module(f"agent.commands.{module}").add_arguments(p)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named in argv: the first word that is not an option (the top level has
    only --help and --version, neither of which takes a value)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def stderr_is_journal() -> bool:
    """Whether stderr goes to journald, which stamps every line itself: systemd sets
    JOURNAL_STREAM to the device and inode of the stream it connected (systemd.exec(5)); a
    child whose stderr was redirected inherits the variable but not the stream."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def log_format() -> str:
    """Log lines carry the time unless journald adds it."""
    plain = "%(levelname)s %(name)s: %(message)s"
    return plain if stderr_is_journal() else "%(asctime)s " + plain


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    # An unknown or missing command builds the full parser: argparse's error then lists them all.
    args = build_parser(chosen_command(argv)).parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=log_format())
    # pymodbus logs raw frames on every error; a dead meter would flood the journal.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # APScheduler logs every job run at INFO: one line per poll per bus would drown the journal.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    module = importlib.import_module(f"agent.commands.{args._module}")
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `check-config | head -3`: the reader is gone, which is no error of ours. Point
        # stdout at /dev/null so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


if __name__ == "__main__":
    sys.exit(main())
