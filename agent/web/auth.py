"""Login for the web page: the password file, signed session cookies, CSRF tokens, lockout.

The password file holds one line `user:scrypt$N$r$p$salt$hash` (base64 salt and hash), mode
0600, written by `energy-agent web-passwd`. scrypt (RFC 7914, in Python's hashlib through
OpenSSL) with N=2^14, r=8, p=1 costs 16 MiB and ~50 ms per try: cheap for one login, dear
for a guesser, and affordable on a 256 MB gateway.

A session is a cookie `payload.mac`: payload = base64 JSON {user, expiry, csrf token}, mac =
HMAC-SHA256 under a key drawn at start-up, so a restart of `serve` logs everybody out and no
session store is needed. The CSRF token travels in every form and must match the session's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_PASSWORD_BYTES = 1024  # scrypt takes any length; a huge one is only a way to burn CPU
USER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class PasswordFileError(Exception):
    """The password file is missing, unreadable, too open or malformed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r + (1 << 20), dklen=32)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        return False
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt" or not (2 <= int(n) <= 2**20 and 1 <= int(r) <= 32 and 1 <= int(p) <= 16):
            return False
        got = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(got, _unb64(digest))
    except (ValueError, TypeError):
        return False


def check_user(user: str) -> str:
    if not user or len(user) > 64 or not set(user) <= USER_CHARS:
        raise ValueError(f"user: expected 1-64 letters, digits, _ . -, got {user!r}")
    return user


def write_password_file(path: str | Path, user: str, password: str) -> None:
    """Write (replace) the file atomically, mode 0600 from its first byte."""
    path = Path(path)
    line = f"{check_user(user)}:{hash_password(password)}\n"
    fd, tmp = tempfile.mkstemp(prefix=".web-password.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_password_file(path: str | Path) -> tuple[str, str]:
    """(user, stored hash). Refuses a file that group or others can read or write."""
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise PasswordFileError(f"web password file {path}: cannot read: {e} "
                                "(create it with `energy-agent web-passwd`)") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PasswordFileError(f"web password file {path}: mode {stat.S_IMODE(st.st_mode):04o}, "
                                "expected 0600 (chmod 600 it)")
    user, sep, stored = text.strip().partition(":")
    if not sep or not stored.startswith("scrypt$"):
        raise PasswordFileError(f"web password file {path}: expected one line user:scrypt$… "
                                "(recreate it with `energy-agent web-passwd`)")
    return user, stored


@dataclass(frozen=True, slots=True)
class Session:
    user: str  # "" on a page without login: the session only carries the CSRF token
    expires: int  # unix seconds
    csrf: str


class Sessions:
    def __init__(self, lifetime_s: float, key: bytes | None = None) -> None:
        self.lifetime_s = lifetime_s
        self._key = key or secrets.token_bytes(32)

    def issue(self, user: str, now: float) -> tuple[str, Session]:
        s = Session(user, int(now + self.lifetime_s), secrets.token_urlsafe(24))
        payload = _b64(json.dumps([s.user, s.expires, s.csrf], separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}", s

    def read(self, cookie: str | None, now: float) -> Session | None:
        if not cookie or len(cookie) > 512 or "." not in cookie:
            return None
        payload, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            user, expires, csrf = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return None
        if not (isinstance(user, str) and isinstance(expires, int) and isinstance(csrf, str)):
            return None
        return Session(user, expires, csrf) if expires > now else None

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())


def csrf_ok(session: Session | None, token: str | None) -> bool:
    return session is not None and bool(token) and hmac.compare_digest(session.csrf, token or "")


@dataclass
class Lockout:
    """Failed logins per client address; `failures` in a row lock that address out for
    `minutes`, and four times as many from all addresses together lock the login for everyone
    (a guesser on many addresses)."""

    failures: int
    minutes: float
    _count: dict[str, int] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)
    _ALL = "*"

    def locked_for(self, addr: str, now: float) -> float:
        """Seconds this address must still wait (0: it may try)."""
        until = max(self._until.get(addr, 0.0), self._until.get(self._ALL, 0.0))
        return max(0.0, until - now)

    def failed(self, addr: str, now: float) -> bool:
        """Count one failure; True when it starts a lockout."""
        started = False
        for key, limit in ((addr, self.failures), (self._ALL, 4 * self.failures)):
            n = self._count.get(key, 0) + 1
            if n >= limit:
                self._until[key] = now + 60 * self.minutes
                n = 0
                started = True
            self._count[key] = n
        if len(self._count) > 10_000:  # bounded: forget addresses that are not locked
            self._count = {k: v for k, v in self._count.items() if k in self._until or k == self._ALL}
        return started

    def succeeded(self, addr: str) -> None:
        self._count.pop(addr, None)
