"""`energy-agent web-passwd`: set the web page's login (password hash file, mode 0600)."""

from __future__ import annotations

import argparse
import getpass
import sys

from agent.commands._common import add_config_argument, load_or_exit

MIN_LENGTH = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--user", default="admin", help="login name (default admin)")
    parser.add_argument("--file", help="password file (default: web.password_file of the config)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin instead of asking twice")


def run(args: argparse.Namespace) -> int:
    from agent.web.auth import check_user, write_password_file

    path = args.file
    if path is None:
        path = load_or_exit(args.config).web.password_file
        if path is None:
            print("error: no web.password_file in the config and no --file given", file=sys.stderr)
            return 2
    try:
        check_user(args.user)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("new web password: ")
        if getpass.getpass("again: ") != password:
            print("error: the two passwords differ", file=sys.stderr)
            return 2
    if len(password) < MIN_LENGTH:
        print(f"error: the password needs at least {MIN_LENGTH} characters", file=sys.stderr)
        return 2
    try:
        write_password_file(path, args.user, password)
    except OSError as e:
        print(f"error: cannot write {path}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} (mode 0600) for user {args.user}; `energy-agent serve` must be able to read it:"
          f" chown energy-agent:energy-agent {path}, then restart energy-agent-web")
    return 0
