"""`python -m agent.bytecode`: fill the daemon's bytecode cache before it starts.

The systemd unit runs the daemon with PYTHONOPTIMIZE=2 — code without docstrings, less
resident memory (bench/README.md) — and PYTHONPYCACHEPREFIX in its cache directory, because
the installed trees are read-only to it and hold no `.opt-2.pyc` files. A module imported with
no cached bytecode is compiled inside the importing process, and the compiler's garbage stays
in the daemon's heap for as long as it runs (~3.5 MiB when nothing is cached). So the unit runs
this first (ExecStartPre): it imports what the daemon imports, in a process that exits, which
compiles and caches whatever is missing or stale — everything after an install, the changed
modules after an upgrade of the agent or of Python — and otherwise only reads the cache.

The list covers the daemon's start-up and every driver; a module some library imports later
at run time is compiled by the daemon itself, which costs a little memory, not correctness.
Always exits 0 for the same reason.
"""

from __future__ import annotations

import importlib
import sys

# The daemon's entry point and what it imports later, lazily (each brings its own imports).
DAEMON_MODULES = (
    "agent.cli", "agent.commands.run", "agent.app", "agent.reports", "buffer.retention",
    "drivers.factory", "drivers.modbus_tcp", "drivers.modbus_rtu",
    "concurrent.futures.thread", "asyncio.sslproto", "json.decoder",
)


def main() -> int:
    if sys.pycache_prefix is None or sys.flags.optimize != 2:
        print("agent.bytecode: nothing to do — it fills the cache of PYTHONOPTIMIZE=2 with "
              "PYTHONPYCACHEPREFIX set (the systemd unit's environment)")
        return 0
    sys.dont_write_bytecode = False  # writing the cache is this step's purpose (PYTHONDONTWRITEBYTECODE)
    for name in DAEMON_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # the daemon reports its own import errors, with context
            print(f"agent.bytecode: cannot import {name}: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
