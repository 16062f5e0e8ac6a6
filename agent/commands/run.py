"""`energy-agent run`: the daemon."""

from __future__ import annotations

import argparse
import logging

from agent.commands._common import add_config_argument, load_or_exit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    import faulthandler

    # The systemd watchdog kills a wedged agent with SIGABRT: print every thread's stack first.
    faulthandler.enable()
    cfg = load_or_exit(args.config)
    logging.getLogger().setLevel(cfg.agent.log_level.upper())
    from agent.config import EX_CONFIG, ConfigError
    from agent.protocol.signing import KeyFileError
    from agent.runtime.app import run_agent

    try:
        return run_agent(cfg)
    except KeyFileError as e:
        logging.getLogger("agent").error("%s", e)
        return 78
    except ConfigError as e:  # found while wiring: key material of a destination, its password
        for line in e.lines:
            logging.getLogger("agent").error("%s", line)
        return EX_CONFIG
