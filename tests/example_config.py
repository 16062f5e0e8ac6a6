"""config/agent.example.toml made usable on this machine: its key, certificate and data paths
pointed at real files of a test's own, since check-config and run load them (a CA, a client
certificate and its 0600 key from openssl, a signing key from keygen's own function)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.protocol.signing import generate_key

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "agent.example.toml"


def key_material(d: Path) -> dict[str, str]:
    """Create the files in `d`; their paths by role (dir, signing, ca, cert, key)."""
    generate_key(d / "signing.key")
    for args in (["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test CA"],
                 ["-keyout", "client.key", "-out", "client.crt", "-subj", "/CN=gw-01"]):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", *args],
                       cwd=d, check=True, capture_output=True)
    (d / "client.key").chmod(0o600)
    return {"dir": str(d), "signing": str(d / "signing.key"), "ca": str(d / "ca.crt"),
            "cert": str(d / "client.crt"), "key": str(d / "client.key")}


def example_text(files: dict[str, str], data_dir: str) -> str:
    """The example config with its paths replaced; everything else as shipped."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in (('"/var/lib/energy-agent"', data_dir),
                     ('"/etc/energy-agent/platform-ca.pem"', files["ca"]),
                     ('"/etc/energy-agent/client.pem"', files["cert"]),
                     ('"/etc/energy-agent/client.key"', files["key"]),
                     ('"/etc/energy-agent/signing.key"', files["signing"])):
        assert old in text, old
        text = text.replace(old, f'"{new}"')
    return text
