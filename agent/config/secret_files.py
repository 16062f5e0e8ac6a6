"""Files that hold secrets (signing key, TLS client key, broker password): only their owner
may read them, and the owner is this process's user or root.

A key that group or others can read is no longer this gateway's identity; one that others can
write, or that another user owns (and can chmod at will), can be swapped for theirs. The mode
and owner are those of the file actually opened (fstat), not of a path that may change.
"""

from __future__ import annotations

import os
import stat

# Group/other bits of any kind.
FOREIGN_ACCESS = stat.S_IRWXG | stat.S_IRWXO
MAX_SECRET_FILE = 64 * 1024  # a key or a password is a few hundred bytes; refuse to slurp more


class SecretFileError(Exception):
    """A secret file that cannot be used; the message is one line saying how to fix it."""


class SecretFileMissing(SecretFileError):
    """No file at that path (callers may know how to create one)."""


def access_problem(st: os.stat_result, path: str, what: str, any_owner: bool = False) -> str | None:
    """Why a file with status `st` may not hold a secret, or None. `any_owner`: skip the owner
    check (root checking files for a daemon that runs as another user)."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: {what} is not a regular file"
    if st.st_mode & FOREIGN_ACCESS:
        return (f"{path}: {what} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}) — run `chmod 600 {path}`")
    if not any_owner and st.st_uid not in (os.geteuid(), 0):
        return (f"{path}: {what} is owned by uid {st.st_uid}, not by this user "
                f"(uid {os.geteuid()}) or root — run `chown {os.geteuid()} {path}`")
    return None


def read_secret(path: str, what: str, any_owner: bool = False) -> bytes:
    """The contents of a secret file, after the mode and owner checks. SecretFileError if it
    is missing, exposed, foreign, or larger than any secret."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SecretFileMissing(f"{path}: {what} not found") from None
    except OSError as e:
        raise SecretFileError(f"{path}: cannot open {what}: {e.strerror}") from None
    try:
        if problem := access_problem(os.fstat(fd), path, what, any_owner):
            raise SecretFileError(problem)
        data = os.read(fd, MAX_SECRET_FILE + 1)
    except OSError as e:
        raise SecretFileError(f"{path}: cannot read {what}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE:
        raise SecretFileError(f"{path}: {what} is larger than {MAX_SECRET_FILE} bytes")
    return data


def readable_problem(path: str, what: str) -> str | None:
    """Why a public file (a CA or a client certificate) cannot be read, or None."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        return f"{path}: {what} not found"
    except IsADirectoryError:
        return f"{path}: {what} is a directory"
    except OSError as e:
        return f"{path}: cannot read {what}: {e.strerror}"
    return None
