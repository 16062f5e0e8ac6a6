"""`energy-agent serve`: the energy manager's web page (docs/web.md), a process of its own.

Never part of `energy-agent run`: the polling daemon's memory target stands, and a fault in
the page cannot stop polling. Listens on 127.0.0.1 unless the config gives TLS and a login.
"""

from __future__ import annotations

import argparse
import logging
import sys

from agent.commands._common import add_config_argument, load_or_exit
from agent.config import EX_CONFIG

log = logging.getLogger("agent.web")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load_or_exit(args.config)  # also refuses a non-loopback listen without TLS and login
    from agent.config.transport import is_loopback
    from agent.protocol.signing import KeyFileError, load_signer
    from agent.web.auth import PasswordFileError, read_password_file

    w = cfg.web
    if not is_loopback(w.listen) and not (w.tls_cert and w.tls_key and w.password_file):
        print(f"error: web.listen {w.listen!r} is not loopback: TLS and a login are required", file=sys.stderr)
        return EX_CONFIG
    password = None
    if w.password_file:
        try:
            password = read_password_file(w.password_file)
        except PasswordFileError as e:
            print(f"error: {e}", file=sys.stderr)
            return EX_CONFIG
    try:
        public_key: bytes | None = load_signer(cfg.signing.key_file, cfg.signing.key_id).public_key_raw
    except KeyFileError as e:
        public_key = None
        log.warning("signing key unreadable (%s): signatures are not checked and manual entry fails", e)

    import uvicorn

    from agent.web.app import WebApp

    app = WebApp(cfg, password, public_key).build()
    scheme = "https" if w.tls_cert else "http"
    host = f"[{w.listen}]" if ":" in w.listen else w.listen
    log.info("web page on %s://%s:%d/ (%s)", scheme, host, w.port,
             "login required" if password else "no login: loopback only")
    try:
        uvicorn.run(app, host=w.listen, port=w.port, ssl_certfile=w.tls_cert, ssl_keyfile=w.tls_key,
                    loop="asyncio", http="h11", lifespan="on", log_level="warning", access_log=False,
                    server_header=False, date_header=True, proxy_headers=False, limit_concurrency=32,
                    timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024)
    except (OSError, SystemExit) as e:
        print(f"error: cannot serve on {w.listen}:{w.port}: {e}", file=sys.stderr)
        return 1
    return 0
