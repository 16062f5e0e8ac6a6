"""Configs that used to pass check-config and then break the daemon: each is one line, exit 78.

Also the transport rule (plain MQTT only to loopback, unless waived) and the secret files'
modes and owners. 192.0.2.10 is TEST-NET-1 (RFC 5737): the checks refuse before any
connection, and no test here starts anything that would connect to it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli import main
from agent.commands._common import load_or_exit
from agent.config.transport import is_loopback, plaintext_problem
from agent.protocol.signing import generate_key
from tests.example_config import key_material
from tests.test_config import GOOD

# test_config's minimal config with a data dir and key of the test's own, and the keys the
# cases below change spelled out.
BASE = GOOD.replace(
    'enterprise = "91370600780790663W"\n', 'enterprise = "91370600780790663W"\ndata_dir = "{dir}/data"\n'
).replace(
    'host = "127.0.0.1"\n\n[signing]', 'host = "127.0.0.1"\ntopic_prefix = "energy"\n\n[signing]'
).replace("/nonexistent/signing.key", "{dir}/signing.key") + """
[schedule]
heartbeat = 300

[storage]
raw_keep_days = 31
budget_mb = 1024
retention_interval = 3600
"""


def write(tmp_path: Path, text: str) -> Path:
    if not (tmp_path / "signing.key").exists():
        generate_key(tmp_path / "signing.key")
    f = tmp_path / "agent.toml"
    f.write_text(text.replace("{dir}", str(tmp_path)), encoding="utf-8")
    return f


def check_config(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """check-config in-process: (exit status, stdout, stderr)."""
    f = write(tmp_path, text)
    try:
        code = main(["check-config", str(f)])
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, key: str) -> str:
    assert code == 78, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and f": {key}: " in lines[0], lines[0]
    return lines[0]


def sub(old: str, new: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        assert old in text
        return text.replace(old, new, 1)

    return mutate


NESTED = "[" * 40 + "]" * 40
CASES: list[tuple[str, Callable[[str], str], str]] = [
    ("heartbeat 1e308", sub("heartbeat = 300", "heartbeat = 1e308"), "schedule.heartbeat"),
    ("retention_interval 1e308", sub("retention_interval = 3600", "retention_interval = 1e308"),
     "storage.retention_interval"),
    ("scale nan", sub("scale = 0.01", "scale = nan"), "meter[0].point[0].scale"),
    ("scale inf", sub("scale = 0.01", "scale = -inf"), "meter[0].point[0].scale"),
    ("offset 1e308", sub("scale = 0.01", "scale = 0.01\noffset = 1e308"), "meter[0].point[0].offset"),
    ("modulus nan", sub("scale = 0.01", "scale = 0.01\nmodulus = nan"), "meter[0].point[0].modulus"),
    ("NUL in data_dir", sub('data_dir = "{dir}/data"', 'data_dir = "{dir}/da\\u0000ta"'), "agent.data_dir"),
    ("relative data_dir", sub('data_dir = "{dir}/data"', 'data_dir = "data"'), "agent.data_dir"),
    ("missing ca_file", sub('topic_prefix = "energy"',
                            'topic_prefix = "energy"\ntls = true\nca_file = "{dir}/nope-ca.pem"'),
     "platform.ca_file"),
    ("ca_file not a certificate", sub('topic_prefix = "energy"',
                                      'topic_prefix = "energy"\ntls = true\nca_file = "{dir}/agent.toml"'),
     "platform.ca_file"),
    ("gateway ends in newline", sub('gateway = "gw-01"', 'gateway = "gw-01\\n"'), "agent.gateway"),
    ("meter name ends in newline", sub('name = "m1"', 'name = "m1\\n"'), "meter[0].name"),
    ("NUL in topic prefix", sub('topic_prefix = "energy"', 'topic_prefix = "ene\\u0000rgy"'),
     "platform.topic_prefix"),
    ("$SYS topic prefix", sub('topic_prefix = "energy"', 'topic_prefix = "$SYS/energy"'),
     "platform.topic_prefix"),
    ("wildcard topic prefix", sub('topic_prefix = "energy"', 'topic_prefix = "energy/+"'),
     "platform.topic_prefix"),
    ("65,536-byte client id", sub('topic_prefix = "energy"',
                                  'topic_prefix = "energy"\nclient_id = "' + "c" * 65536 + '"'),
     "platform.client_id"),
    ("raw_keep_days 1e308", sub("raw_keep_days = 31", "raw_keep_days = 1e308"), "storage.raw_keep_days"),
    ("budget_mb inf", sub("budget_mb = 1024", "budget_mb = inf"), "storage.budget_mb"),
    ("profile ../../x", sub('unit = 1\n[[meter.point]]', 'unit = 1\nprofile = "../../x"\n[[meter.point]]'),
     "meter[0].profile"),
    ("profile ../../x.toml", sub('unit = 1\n[[meter.point]]',
                                 'unit = 1\nprofile = "../../etc/x.toml"\n[[meter.point]]'),
     "meter[0].profile"),
    ("5000-char profile name", sub('unit = 1\n[[meter.point]]',
                                   'unit = 1\nprofile = "' + "p" * 5000 + '"\n[[meter.point]]'),
     "meter[0].profile"),
    ("arbitrary key_id", sub('key_file = "{dir}/signing.key"',
                             'key_file = "{dir}/signing.key"\nkey_id = "0123456789abcdef"'),
     "signing.key_id"),
    ("key_id not hex", sub('key_file = "{dir}/signing.key"',
                           'key_file = "{dir}/signing.key"\nkey_id = "gw-01 key"'), "signing.key_id"),
    ("nested arrays", lambda text: f"coefficients = {NESTED}\n" + text, "coefficients" + "[0]" * 16),
    ("nested arrays past the parser", lambda text: "x = " + "[" * 3000 + "]" * 3000 + "\n" + text,
     "(top level)"),
    ("nested tables", lambda text: "x = " + "{a = " * 40 + "1" + "}" * 40 + "\n" + text, "x" + ".a" * 16),
    ("timezone a directory", sub('data_dir = "{dir}/data"', 'data_dir = "{dir}/data"\ntimezone = "Asia"'),
     "agent.timezone"),
    ("timezone 5000 chars", sub('data_dir = "{dir}/data"',
                                'data_dir = "{dir}/data"\ntimezone = "' + "z" * 5000 + '"'), "agent.timezone"),
    ("coefficient inf", sub("[schedule]", "[coefficients]\nelectricity = inf\n\n[schedule]"),
     "coefficients[...]"),
    # Found by the fuzz test: a traceback (KeyError) in check-config.
    ("address on an unknown bus", sub('bus = "lan"\nunit = 1', 'bus = "nope"\nunit = 1\naddress = "123"'),
     "meter[0].bus"),
    ("signing key missing", sub('key_file = "{dir}/signing.key"', 'key_file = "{dir}/nope.key"'),
     "signing.key_file"),
]


@pytest.mark.parametrize(("mutate", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_config_that_would_break_the_daemon_is_one_line_and_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Callable[[str], str], key: str
) -> None:
    code, _, err = check_config(tmp_path, BASE, capsys)
    assert (code, err) == (0, ""), err
    code, _, err = check_config(tmp_path, mutate(BASE), capsys)
    one_error(code, err, key)


def test_a_profile_file_under_the_config_directory_is_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = Path(__file__).resolve().parent.parent / "config" / "profiles" / "chint-dtsu666.toml"
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "site-meter.toml").write_text(shipped.read_text(encoding="utf-8"))
    text = BASE.replace('unit = 1\n[[meter.point]]', 'unit = 1\nprofile = "profiles/site-meter.toml"\n'
                        '[[meter.point]]')
    code, out, err = check_config(tmp_path, text, capsys)
    assert code == 0, err
    assert "profile profiles/site-meter.toml" in out
    # A symlink inside the directory that points out of it is still outside.
    (tmp_path / "profiles" / "out.toml").symlink_to(shipped)
    code, _, err = check_config(tmp_path, text.replace("site-meter.toml", "out.toml"), capsys)
    assert "expected a shipped profile name or a .toml file under" in one_error(code, err, "meter[0].profile")


# -- transport --------------------------------------------------------------------------------

REMOTE_PLAIN = sub('host = "127.0.0.1"\ntopic_prefix', 'host = "192.0.2.10"\ntopic_prefix')


def test_check_config_refuses_plain_mqtt_to_a_remote_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = check_config(tmp_path, REMOTE_PLAIN(BASE), capsys)
    line = one_error(code, err, "platform.tls")
    assert "plain text to 192.0.2.10 (not this machine)" in line
    assert 'platform.allow_plaintext = "<why plain text is acceptable here>"' in line
    for local in ("localhost", "127.0.0.53", "::1"):
        code, _, err = check_config(tmp_path, BASE.replace('host = "127.0.0.1"\ntopic', f'host = "{local}"\ntopic'),
                                    capsys)
        assert code == 0, err


def test_the_waiver_is_accepted_and_logged_at_every_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    text = REMOTE_PLAIN(BASE).replace(
        'topic_prefix = "energy"', 'topic_prefix = "energy"\nallow_plaintext = "site VPN to the platform"')
    with caplog.at_level(logging.WARNING, logger="agent"):
        code, out, err = check_config(tmp_path, text, capsys)
    assert code == 0, err
    assert "OK" in out
    # `run` loads its config the same way: the daemon's setup, up to (not including) the
    # connection, with the waiver's WARNING line.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent"):
        cfg = load_or_exit(str(tmp_path / "agent.toml"), preflight=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{tmp_path / 'agent.toml'}: platform: plain text (no TLS) to 192.0.2.10, "
                        "allowed by platform.allow_plaintext: 'site VPN to the platform'"]
    assert cfg.platform.host == "192.0.2.10"


def test_the_transport_rule_is_one_function_for_every_destination() -> None:
    # What an HTTP destination will call with its own waiver key.
    assert plaintext_problem("192.0.2.10", False, None, "destination[1].allow_plaintext") == (
        "plain text to 192.0.2.10 (not this machine) would expose credentials and data on the path; "
        'enable TLS, or set destination[1].allow_plaintext = "<why plain text is acceptable here>"')
    assert plaintext_problem("192.0.2.10", True, None, "k") is None
    assert plaintext_problem("192.0.2.10", False, "VPN", "k") is None
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "a.localhost"):
        assert is_loopback(host), host
    for host in ("192.0.2.10", "10.0.0.1", "localhost.example.com", "127.0.0.1.nip.io", "0.0.0.0", "::"):
        assert not is_loopback(host), host


def test_a_waiver_with_tls_on_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE.replace('topic_prefix = "energy"', 'topic_prefix = "energy"\ntls = true\nallow_plaintext = "x"')
    code, _, err = check_config(tmp_path, text, capsys)
    assert code == 0, err
    assert err.strip() == f"warning: {tmp_path / 'agent.toml'}: platform.allow_plaintext: ignored, tls = true"


def test_run_refuses_plain_mqtt_to_a_remote_host_before_connecting(tmp_path: Path) -> None:
    f = write(tmp_path, REMOTE_PLAIN(BASE))
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"error: {f}: platform.tls: plain text to 192.0.2.10 (not this machine) "
                                "would expose credentials and data on the path; enable TLS, or set "
                                'platform.allow_plaintext = "<why plain text is acceptable here>"')
    assert not (tmp_path / "data").exists()  # refused before the store, let alone the broker
    assert time.monotonic() - started < 30
    r = subprocess.run([sys.executable, "-m", "agent", "check-config", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and r.stderr.count("\n") == 1, r.stderr


def test_run_exits_78_not_1_on_what_used_to_crash_it(tmp_path: Path) -> None:
    # heartbeat = 1e308 was an OverflowError in the scheduler, exit 1: systemd restarted it
    # forever. Now the same one line as check-config, and 78 (RestartPreventExitStatus).
    f = write(tmp_path, BASE.replace("heartbeat = 300", "heartbeat = 1e308"))
    r = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip() == f"error: {f}: schedule.heartbeat: expected float <= 86400.0"


# -- secret files -----------------------------------------------------------------------------


def with_password(tmp_path: Path, mode: int) -> str:
    pw = tmp_path / "broker.pw"
    pw.write_text("s3cret\n")
    pw.chmod(mode)
    return BASE.replace('topic_prefix = "energy"',
                        f'topic_prefix = "energy"\nusername = "gw-01"\npassword_file = "{pw}"')


def test_a_password_file_others_can_read_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check_config(tmp_path, with_password(tmp_path, 0o644), capsys)
    line = one_error(code, err, "platform.password_file")
    assert "password file is accessible by group or others (mode 0644) — run `chmod 600" in line
    code, _, err = check_config(tmp_path, with_password(tmp_path, 0o600), capsys)
    assert code == 0, err


def test_a_client_key_others_can_read_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    files = key_material(d)
    text = BASE.replace('topic_prefix = "energy"', f'topic_prefix = "energy"\ntls = true\nca_file = "{files["ca"]}"\n'
                        f'cert_file = "{files["cert"]}"\nkey_file = "{files["key"]}"')
    (d / "client.key").chmod(0o644)
    code, _, err = check_config(tmp_path, text, capsys)
    assert "TLS client key is accessible by group or others (mode 0644)" in one_error(
        code, err, "platform.key_file")
    (d / "client.key").chmod(0o600)
    code, _, err = check_config(tmp_path, text, capsys)
    assert code == 0, err
    # A key that does not belong to the certificate: caught now, not at the first connect.
    (d / "client.key").write_bytes((d / "ca.key").read_bytes())
    code, _, err = check_config(tmp_path, text, capsys)
    assert "not a usable certificate and private key pair" in one_error(code, err, "platform.cert_file")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_secret_owned_by_another_user_is_refused_by_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = with_password(tmp_path, 0o600)
    os.chown(tmp_path / "broker.pw", 54321, -1)
    # check-config as root checks for a daemon that runs as its own user: the owner is run's
    # business (the service user owns its keys after install).
    code, _, err = check_config(tmp_path, text, capsys)
    assert code == 0, err
    with pytest.raises(SystemExit) as e:
        load_or_exit(str(tmp_path / "agent.toml"), preflight=True, for_run=True)
    _, err = capsys.readouterr()
    assert e.value.code == 78
    assert "password file is owned by uid 54321, not by this user" in one_error(
        78, err, "platform.password_file")
    os.chown(tmp_path / "signing.key", 54321, -1)
    os.chown(tmp_path / "broker.pw", 0, -1)
    with pytest.raises(SystemExit):
        load_or_exit(str(tmp_path / "agent.toml"), preflight=True, for_run=True)
    _, err = capsys.readouterr()
    assert "signing key is owned by uid 54321" in one_error(78, err, "signing.key_file")


@pytest.mark.parametrize(("content", "expected"), [
    (b"[agent]\ngateway = \"gw-\xff\"\n", "cannot read: 'utf-8' codec can't decode byte 0xff"),
    (b"# " + b"x" * (4 * 1024 * 1024) + b"\n", "larger than 4 MiB, not a config"),
    (b"[agent]\ngateway = \"gw\x00\"\n", "not valid TOML"),
])
def test_a_file_that_is_no_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    f = tmp_path / "agent.toml"
    f.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        main(["check-config", str(f)])
    _, err = capsys.readouterr()
    assert e.value.code == 78
    assert err.count("\n") == 1 and err.startswith(f"error: {f}: ") and expected in err, err
