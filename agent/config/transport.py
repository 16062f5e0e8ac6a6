"""What a connection to a destination must be: encrypted, unless it stays on this machine or
the config names a reason.

One rule for every destination kind (the MQTT platform today; HTTP destinations use the same
function): plain text to anything but loopback carries the gateway's credentials and the
enterprise's data readable and forgeable by anyone on the path, so it is refused unless the
config sets a waiver key with a reason, which is then logged at every start.
"""

from __future__ import annotations

import ipaddress

LOCAL_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True for a loopback address or a name that never leaves the machine. Other names are
    not resolved: what DNS says today is no promise about where the bytes go tomorrow."""
    name = host.strip().lower()
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_problem(host: str, encrypted: bool, waiver: str | None, waiver_key: str) -> str | None:
    """Why a connection to `host` may not be made as configured, or None.

    `encrypted`: TLS (MQTT over TLS, HTTPS). `waiver`: the value of `waiver_key`, the reason a
    plain-text link is acceptable here (a VPN, a private APN), or None.
    """
    if encrypted or waiver or is_loopback(host):
        return None
    return (f"plain text to {host} (not this machine) would expose credentials and data on the "
            f"path; enable TLS, or set {waiver_key} = \"<why plain text is acceptable here>\"")


def plaintext_warning(host: str, encrypted: bool, waiver: str | None, waiver_key: str) -> str | None:
    """The line logged at every start when a waiver is in use, or None."""
    if encrypted or not waiver or is_loopback(host):
        return None
    reason = repr(waiver[:200])  # escaped: the reason is config text, it must stay one line
    return f"plain text (no TLS) to {host}, allowed by {waiver_key}: {reason}"
