"""`energy-agent keygen` as a real subprocess, and load_signer's refusals."""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.protocol.signing import (
    Ed25519Signer,
    KeyFileError,
    generate_key,
    key_id_for,
    load_signer,
)

ROOT = Path(__file__).resolve().parent.parent


def keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "keygen", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )


def printed_key(stdout: str) -> tuple[str, bytes, str]:
    kid = re.search(r"key id:\s+([0-9a-f]{16})$", stdout, re.M)
    b64 = re.search(r"public key:\s+(\S+)", stdout)
    pem = re.search(r"-----BEGIN PUBLIC KEY-----\n.*?\n-----END PUBLIC KEY-----\n", stdout, re.S)
    assert kid and b64 and pem, stdout
    return kid.group(1), base64.b64decode(b64.group(1), validate=True), pem.group(0)


def test_keygen_writes_0600_key_and_prints_its_public_key(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    r = keygen("--key", str(key))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    kid, raw, pem = printed_key(r.stdout)
    signer = load_signer(key)
    assert raw == signer.public_key_raw
    assert kid == signer.key_id == key_id_for(raw)
    pem_key = serialization.load_pem_public_key(pem.encode())
    assert pem_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    assert keygen("--key", str(key)).returncode == 0
    before = key.read_bytes()
    r = keygen("--key", str(key))
    assert r.returncode == 1
    assert "already exists" in r.stderr and "refusing to overwrite" in r.stderr
    assert r.stdout == ""
    assert key.read_bytes() == before


def test_keygen_uses_the_configs_key_file(tmp_path: Path) -> None:
    key = tmp_path / "from-config.key"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[agent]\ngateway = "gw-01"\nenterprise = "91370600780790663W"\n'
        '[platform]\nhost = "127.0.0.1"\n'
        f'[signing]\nkey_file = "{key}"\n',
        encoding="utf-8",
    )
    r = keygen("-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert printed_key(r.stdout)[1] == load_signer(key).public_key_raw


def test_keygen_reports_a_missing_directory(tmp_path: Path) -> None:
    r = keygen("--key", str(tmp_path / "nope" / "signing.key"))
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_load_signer_refuses_group_or_world_access(tmp_path: Path) -> None:
    key = tmp_path / "k"
    generate_key(key)
    for mode in (0o644, 0o640, 0o604, 0o620, 0o602):
        os.chmod(key, mode)
        with pytest.raises(KeyFileError) as e:
            load_signer(key)
        assert f"chmod 600 {key}" in str(e.value) and f"{mode:04o}" in str(e.value)
        assert "\n" not in str(e.value)
    os.chmod(key, 0o400)
    assert load_signer(key, key_id="platform-given").key_id == "platform-given"


def test_load_signer_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found — create it with `energy-agent keygen"):
        load_signer(tmp_path / "missing")

    not_pem = tmp_path / "not-pem"
    not_pem.write_text("hello\n")
    os.chmod(not_pem, 0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted Ed25519 PKCS8 PEM"):
        load_signer(not_pem)

    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = tmp_path / "p256"
    p256.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    os.chmod(p256, 0o600)
    with pytest.raises(KeyFileError, match="expected an Ed25519 private key"):
        load_signer(p256)


def test_generated_key_signs_and_verifies(tmp_path: Path) -> None:
    raw, kid = generate_key(tmp_path / "k")
    signer = load_signer(tmp_path / "k")
    assert (signer.public_key_raw, signer.key_id, signer.alg) == (raw, kid, "ed25519")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(raw).verify(signer.sign(b"batch"), b"batch")
    assert "PRIVATE" not in repr(signer)
    assert isinstance(signer, Ed25519Signer)
