"""`energy-agent keygen`: create the gateway's Ed25519 signing key and show what to register."""

from __future__ import annotations

import argparse
import sys

DEFAULT_KEY = "/etc/energy-agent/signing.key"
SERVICE_USER = "energy-agent"


def _owner(requested: str | None) -> tuple[int, int, str] | None:
    """Who must own the key: the agent refuses a key others can read, so a key made by root for
    the service must belong to the service user, or the unit fails at start."""
    import os
    import pwd

    if requested is None:
        if os.geteuid() != 0:
            return None
        requested = SERVICE_USER
        try:
            pw = pwd.getpwnam(requested)
        except KeyError:
            return None
    else:
        try:
            pw = pwd.getpwnam(requested)
        except KeyError:
            raise SystemExit(f"error: --owner {requested}: no such user") from None
    return pw.pw_uid, pw.pw_gid, requested


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--key", metavar="FILE", help=f"key file to create (default {DEFAULT_KEY})")
    where.add_argument(
        "-c", "--config", metavar="CONFIG", help="create the key named by the config's signing.key_file"
    )
    parser.add_argument(
        "--owner", metavar="USER",
        help=f"give the key file to USER (default when run as root: {SERVICE_USER}, if that user exists)",
    )


def run(args: argparse.Namespace) -> int:
    from agent.protocol.signing import KeyFileError, generate_key, public_key_base64, public_key_pem

    key_id_override = None
    if args.config:
        from agent.commands._common import load_or_exit

        cfg = load_or_exit(args.config)
        path = cfg.signing.key_file
        key_id_override = cfg.signing.key_id
    else:
        path = args.key or DEFAULT_KEY
    owner = _owner(args.owner)
    try:
        raw, key_id = generate_key(path)
    except KeyFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    owned = ""
    if owner is not None:
        import os

        try:
            os.chown(path, owner[0], owner[1])
        except OSError as e:
            print(f"error: {path}: cannot give the key to {owner[2]}: {e}", file=sys.stderr)
            return 1
        owned = f", owner {owner[2]}"
    print(f"wrote {path} (Ed25519, PKCS8 PEM, mode 0600{owned})")
    print()
    print("Register this gateway's public key with the platform:")
    print(f"  key id:     {key_id}")
    print(f"  public key: {public_key_base64(raw)}  (base64 of the raw 32 bytes)")
    print()
    print(public_key_pem(raw), end="")
    if key_id_override and key_id_override != key_id:
        print()
        print(f"note: the config sets signing.key_id = {key_id_override!r}, which is not this key's "
              f"id: remove it (or set {key_id!r}) — check-config and run refuse any other")
    return 0
