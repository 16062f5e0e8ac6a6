"""Reading the signing key: the daemon's own RFC 8410 path agrees with cryptography's loader."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.protocol.signing import Ed25519Signer, KeyFileError, _pkcs8_seed, generate_key, load_signer

ROOT = Path(__file__).resolve().parent.parent


def _pem(key: Ed25519PrivateKey, encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


def test_seed_of_a_pkcs8_pem_is_the_private_key() -> None:
    for _ in range(20):
        key = Ed25519PrivateKey.generate()
        assert _pkcs8_seed(_pem(key)) == key.private_bytes_raw()


def test_seed_accepts_crlf_and_trailing_blank_lines() -> None:
    key = Ed25519PrivateKey.generate()
    pem = _pem(key).replace(b"\n", b"\r\n") + b"\r\n\r\n"
    assert _pkcs8_seed(pem) == key.private_bytes_raw()


@pytest.mark.parametrize("mangle", [
    lambda pem: pem.replace(b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"),
    lambda pem: pem.replace(b"-----END PRIVATE KEY-----", b""),
    lambda pem: b"comment before the key\n" + pem,
    lambda pem: pem.replace(pem.splitlines()[1], pem.splitlines()[1][:-4]),  # 45 bytes of DER
    lambda pem: pem.replace(pem.splitlines()[1], pem.splitlines()[1][:-1] + b"*"),  # not base64
], ids=["encrypted-label", "no-end", "text-before", "short", "bad-base64"])
def test_seed_leaves_anything_else_to_cryptography(mangle: Callable[[bytes], bytes]) -> None:
    assert _pkcs8_seed(mangle(_pem(Ed25519PrivateKey.generate()))) is None


def test_seed_refuses_another_algorithm_of_the_same_length() -> None:
    # X25519 PKCS8 is 48 bytes too; only the OID tells them apart.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    pem = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert _pkcs8_seed(pem) is None
    with pytest.raises(ValueError, match="expected an Ed25519 private key"):
        Ed25519Signer.from_pem(pem)


def test_pem_with_text_around_it_still_loads_through_cryptography() -> None:
    key = Ed25519PrivateKey.generate()
    signer = Ed25519Signer.from_pem(b"gateway 7 signing key\n" + _pem(key))
    assert signer.public_key_raw == key.public_key().public_bytes_raw()


def test_encrypted_key_is_refused_with_the_usual_message(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(_pem(Ed25519PrivateKey.generate(), serialization.BestAvailableEncryption(b"pw")))
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted Ed25519 PKCS8 PEM"):
        load_signer(path)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_key_made_by_openssl_loads_and_signs(tmp_path: Path) -> None:
    path = tmp_path / "k"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True)
    os.chmod(path, 0o600)
    pem = path.read_bytes()
    assert _pkcs8_seed(pem) is not None
    expected = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(expected, Ed25519PrivateKey)
    signer = load_signer(path)
    assert signer.public_key_raw == expected.public_key().public_bytes_raw()
    assert signer.sign(b"x") == expected.sign(b"x")  # Ed25519 signatures are deterministic


def test_the_daemons_key_path_never_loads_cryptography(tmp_path: Path) -> None:
    # The daemon keeps every module it imports, and cryptography's Rust extension alone is ~7
    # MiB resident (issue 2, RSS): loading the key and signing go through PyNaCl.
    generate_key(tmp_path / "k")
    code = (
        "import sys; import agent.runtime.app, agent.accounting.reports, drivers.modbus_tcp, drivers.modbus_rtu\n"
        "from agent.protocol.signing import load_signer\n"
        f"s = load_signer({str(tmp_path / 'k')!r}); s.sign(b'x')\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pynacl_signs_exactly_as_cryptography() -> None:
    # Ed25519 (RFC 8032) is deterministic: the same key and bytes give the same signature.
    for n in range(50):
        key = Ed25519PrivateKey.generate()
        data = os.urandom(n * 37)
        signer = Ed25519Signer.from_private_key(key)
        assert signer.public_key_raw == key.public_key().public_bytes_raw()
        assert signer.sign(data) == key.sign(data)
        key.public_key().verify(signer.sign(data), data)
