"""What every subcommand that reads the config shares: the -c option and the exit-78 rule."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from agent.config import EX_CONFIG, Config, ConfigError, load_config


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    from agent.cli import DEFAULT_CONFIG

    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
    )


def load_or_exit(path: str, preflight: bool = False, for_run: bool = False) -> Config:
    """Load the config; on error print one line per mistake and exit 78 (EX_CONFIG).

    `preflight` (check-config and run): also check what the daemon needs beyond the file —
    the transport rule, key files, key id (agent/config/preflight.py). Its warnings (a
    plain-text waiver in use) go to the log, so the daemon repeats them at every start."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        exit_config(e.lines)
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if preflight:
        from agent.config.preflight import preflight as check

        errors, warnings = check(cfg, for_run)
        if errors:
            exit_config(errors)
        for w in warnings:
            logging.getLogger("agent").warning("%s", w)
    return cfg


def exit_config(lines: list[str]) -> NoReturn:
    for line in ConfigError(lines).lines:  # escaped and truncated: one line each
        print(f"error: {line}", file=sys.stderr)
    raise SystemExit(EX_CONFIG)
