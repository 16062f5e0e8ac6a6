"""What every subcommand that reads the config shares: the -c option and the exit-78 rule."""

from __future__ import annotations

import argparse
import sys

from agent.config import EX_CONFIG, Config, ConfigError, load_config


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    from agent.cli import DEFAULT_CONFIG

    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
    )


def load_or_exit(path: str) -> Config:
    """Load the config; on error print one line per mistake and exit 78 (EX_CONFIG)."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return cfg
