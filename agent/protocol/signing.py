"""The gateway's signing identity: an Ed25519 key in a 0600 PKCS8 PEM file.

The algorithm is named in every envelope (`alg`) and the signer is a small protocol, so a
later SM2 signer (not supported by `cryptography` today) can slot in beside Ed25519.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nacl.signing import SigningKey

from agent.config.secret_files import SecretFileError, SecretFileMissing, read_secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# The daemon signs with PyNaCl (libsodium) and reads its key through _pkcs8_seed, so it never
# loads `cryptography`: its Rust extension alone keeps ~7 MiB resident against PyNaCl's ~1.3
# (issue 2's RSS target is 45 MiB). Ed25519 (RFC 8032) is deterministic, so both libraries
# make the same signature of the same bytes with the same key (tests/test_signing.py).
# `cryptography` is imported only to write a key file, or to read one in another form.

# Mode and owner rules for the key file, shared with the other secret files:
# agent/config/secret_files.py.

# RFC 8410 section 7: an Ed25519 PKCS8 v1 key is always these 16 DER bytes and then the 32-byte
# seed: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }.
# It is what `keygen`, cryptography and `openssl genpkey -algorithm ed25519` write.
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN = b"-----BEGIN PRIVATE KEY-----"
_PEM_END = b"-----END PRIVATE KEY-----"


class Signer(Protocol):
    alg: str
    key_id: str

    def sign(self, data: bytes) -> bytes: ...


class KeyFileError(Exception):
    """A signing key file that cannot be used; the message is one line saying how to fix it."""


class Ed25519Signer:
    alg = "ed25519"

    def __init__(self, seed: bytes, key_id: str | None = None):
        """From the key's 32-byte seed (RFC 8032's private key)."""
        self._key = SigningKey(seed)
        self.public_key_raw = bytes(self._key.verify_key)
        self.key_id = key_id or key_id_for(self.public_key_raw)

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey, key_id: str | None = None) -> Ed25519Signer:
        """From a `cryptography` key object."""
        return cls(key.private_bytes_raw(), key_id)

    @classmethod
    def from_pem(cls, pem: bytes, key_id: str | None = None) -> Ed25519Signer:
        """From PKCS8 PEM bytes, without the file checks (tests, the worked example)."""
        seed = _pkcs8_seed(pem)
        if seed is not None:
            return cls(seed, key_id)
        # Anything else (text around the PEM, PKCS8 v2 with the public key, an encrypted or a
        # foreign key): cryptography decides, and says what is wrong with it.
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except UnsupportedAlgorithm as e:
            raise ValueError(str(e)) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"expected an Ed25519 private key, got {type(key).__name__}")
        return cls.from_private_key(key, key_id)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature

    def __repr__(self) -> str:  # never show key material in logs or tracebacks
        return f"Ed25519Signer(key_id={self.key_id!r})"


def _pkcs8_seed(pem: bytes) -> bytes | None:
    """The seed of an Ed25519 PKCS8 v1 PEM in exactly the RFC 8410 form, else None."""
    lines = pem.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != _PEM_BEGIN or lines[-1].strip() != _PEM_END:
        return None
    try:
        der = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
    except ValueError:
        return None
    if len(der) != len(_PKCS8_ED25519_PREFIX) + 32 or not der.startswith(_PKCS8_ED25519_PREFIX):
        return None
    return der[len(_PKCS8_ED25519_PREFIX):]


def key_id_for(public_key_raw: bytes) -> str:
    """The key id the platform files the key under: 16 hex digits of SHA-256(raw public key)."""
    if len(public_key_raw) != 32:
        raise ValueError(f"expected a raw 32-byte Ed25519 public key, got {len(public_key_raw)}")
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def public_key_base64(public_key_raw: bytes) -> str:
    return base64.b64encode(public_key_raw).decode("ascii")


def public_key_pem(public_key_raw: bytes) -> str:
    """SubjectPublicKeyInfo PEM, what most platforms' crypto libraries import directly."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(public_key_raw)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_signer(path: str | Path, key_id: str | None = None, any_owner: bool = False) -> Ed25519Signer:
    """Load the gateway's key; refuse (KeyFileError) a missing, exposed, foreign-owned or
    foreign-format file. `any_owner`: see secret_files.access_problem."""
    path = Path(path)
    try:
        data = read_secret(str(path), "signing key", any_owner)
    except SecretFileMissing:
        raise KeyFileError(
            f"{path}: signing key not found — create it with `energy-agent keygen --key {path}`"
        ) from None
    except SecretFileError as e:
        raise KeyFileError(str(e)) from None
    try:
        return Ed25519Signer.from_pem(data, key_id)
    except (ValueError, TypeError) as e:
        # TypeError: an encrypted PEM (no password given); ValueError: not PEM / not Ed25519.
        raise KeyFileError(
            f"{path}: not an unencrypted Ed25519 PKCS8 PEM private key ({_first_line(e)}) — "
            f"create one with `energy-agent keygen --key NEW_FILE`"
        ) from None


def generate_key(path: str | Path) -> tuple[bytes, str]:
    """Create a new key file (0600, never overwriting); return (raw public key, key id)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        # O_EXCL: refuse an existing file (or symlink) atomically; mode 0600 at creation, so
        # there is no moment when the key sits in a readable file.
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{path}: already exists — refusing to overwrite a signing key (the platform knows "
            "this gateway by it); move it away first if you really mean to replace it"
        ) from None
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: directory {path.parent} does not exist — create it first "
            f"(mkdir -p {path.parent})"
        ) from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create signing key: {e.strerror}") from None
    try:
        # A umask can only remove bits, but a restrictive one (e.g. 0277) would leave the owner
        # unable to read the key back; set exactly 0600.
        os.fchmod(fd, 0o600)
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    _fsync_dir(path.parent)
    raw = key.public_key().public_bytes_raw()
    return raw, key_id_for(raw)


def _fsync_dir(directory: Path) -> None:
    # The new directory entry must survive a power cut too, or the key the platform was told
    # about could vanish on the next boot.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    # cryptography appends a FAQ link to PEM errors; the first sentence is the useful part.
    return text.splitlines()[0].split(". See ")[0]
