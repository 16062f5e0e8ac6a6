"""What `check-config` and `run` verify beyond the file itself, before any connection: the
transport rule, the key material on disk and the signing key's id.

`load_config` leaves these out on purpose: `status`, `export` or `enter` read the config as an
operator who may not be allowed to read the daemon's keys, and need none of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from agent.config.destinations import broker_list
from agent.config.schema import Config, MqttDestination, PlatformSection
from agent.config.secret_files import SecretFileError, read_secret, readable_problem
from agent.config.transport import plaintext_problem, plaintext_warning
from buffer.names import MQTT

Err = Callable[[str, str], None]  # (key path, message)


def _mqtt_destinations(cfg: Config) -> list[tuple[str, PlatformSection]]:
    """(key path, settings) of every MQTT destination: `[platform]` is the one named "mqtt"."""
    out: list[tuple[str, PlatformSection]] = []
    for d in cfg.destination:
        if isinstance(d, MqttDestination):
            out.append(("platform" if d.name == MQTT else f"destination {d.name}", d))
    if not out and cfg.platform is not None and cfg.platform.host:
        out.append(("platform", cfg.platform))
    return out


def _check_mqtt_transport(err: Err, errors: list[str], warnings: list[str], source: str, key: str,
                          p: PlatformSection, any_owner: bool) -> None:
    """The transport rule for each broker, and the TLS material and password on disk."""
    n_before = len(errors)
    waiver = f"{key}.allow_plaintext"
    for host, _port in broker_list(p):
        if problem := plaintext_problem(host, p.tls, p.allow_plaintext, waiver):
            err(f"{key}.tls", problem)
        if warning := plaintext_warning(host, p.tls, p.allow_plaintext, waiver):
            warnings.append(f"{source}: {key}: {warning}")
    if p.tls:
        for name, path, what in (("ca_file", p.ca_file, "CA certificate"),
                                 ("cert_file", p.cert_file, "client certificate")):
            if path is not None and (problem := readable_problem(path, what)):
                err(f"{key}.{name}", problem)
        if p.key_file is not None:
            _secret(err, f"{key}.key_file", p.key_file, "TLS client key", any_owner)
        if len(errors) == n_before:
            _tls_context(err, p.ca_file, p.cert_file, p.key_file)
    if p.password_file is not None:
        if p.username is None:
            err(f"{key}.password_file", f"set {key}.username too (a password needs a user)")
        _secret(err, f"{key}.password_file", p.password_file, "password file", any_owner)


def preflight(cfg: Config, for_run: bool) -> tuple[list[str], list[str]]:
    """(errors, warnings) for `cfg`, each one line naming the config file and key.

    Secret files must belong to this user or root. The exception is check-config run by root
    (`for_run` False): the daemon runs as its own user (systemd/energy-agent.service), who owns
    its keys, so root checks their modes and contents and leaves the owner to `run`."""
    from agent.protocol.signing import KeyFileError, load_signer

    any_owner = not for_run and os.geteuid() == 0

    errors: list[str] = []
    warnings: list[str] = []

    def err(key: str, msg: str) -> None:
        errors.append(f"{cfg.source}: {key}: {msg}")

    if problem := _data_dir_problem(cfg.agent.data_dir):
        err("agent.data_dir", problem)
    for key, d in _mqtt_destinations(cfg):
        _check_mqtt_transport(err, errors, warnings, cfg.source, key, d, any_owner)
    try:
        signer = load_signer(cfg.signing.key_file, any_owner=any_owner)
    except KeyFileError as e:
        err("signing.key_file", str(e))
    else:
        if cfg.signing.key_id is not None and cfg.signing.key_id != signer.key_id:
            err("signing.key_id", f"{cfg.signing.key_id!r} is not the id of {cfg.signing.key_file} "
                f"({signer.key_id}); remove key_id (it is derived from the key) or fix it")
    return errors, warnings


def _data_dir_problem(data_dir: str) -> str | None:
    """Why the daemon could not keep its store in `data_dir` (it creates it if missing)."""
    d = Path(data_dir)
    try:
        while not d.exists():
            d = d.parent
        if not d.is_dir():
            return f"{d} is not a directory"
        if not os.access(d, os.W_OK | os.X_OK):
            what = "the store's directory" if str(d) == data_dir else f"{d}, where it would be created,"
            return f"{what} is not writable by this user (uid {os.geteuid()})"
    except OSError as e:
        return f"cannot inspect {d}: {e.strerror}"
    return None


def _tls_context(err: Err, ca_file: str | None, cert_file: str | None, key_file: str | None) -> None:
    """Load the files as the MQTT client will (paho's tls_set): a file that exists but holds
    no certificate, or a key that does not match its certificate, is caught here."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        err("platform.ca_file", f"{ca_file or 'the system CA store'}: not a usable CA certificate file "
            f"({e})")
        return
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as e:
            err("platform.cert_file", f"{cert_file} with key {key_file}: not a usable "
                f"certificate and private key pair ({e})")


def _secret(err: Err, key: str, path: str, what: str, any_owner: bool) -> None:
    try:
        read_secret(path, what, any_owner)
    except SecretFileError as e:
        err(key, str(e))
