"""`energy-agent run`: the daemon."""

from __future__ import annotations

import argparse
import logging

from agent.commands._common import add_config_argument, load_or_exit
from agent.config import EX_CONFIG, ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    import faulthandler

    # The systemd watchdog kills a wedged agent with SIGABRT: print every thread's stack first.
    faulthandler.enable()
    # Everything check-config checks, before the first connection; a refusal is exit 78, which
    # the unit's RestartPreventExitStatus keeps systemd from restarting in a loop.
    cfg = load_or_exit(args.config, preflight=True, for_run=True)
    logging.getLogger().setLevel(cfg.agent.log_level.upper())
    from agent.protocol.signing import KeyFileError
    from agent.runtime.app import run_agent

    try:
        return run_agent(cfg)
    except (KeyFileError, ConfigError) as e:
        # A key or file that changed since the checks above: still a configuration problem.
        for line in getattr(e, "lines", None) or [str(e)]:
            logging.getLogger("agent").error("%s", line)
        return EX_CONFIG
