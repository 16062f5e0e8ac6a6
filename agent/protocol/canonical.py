"""RFC 8785 (JCS) canonical JSON for the values a signed envelope may hold.

Signed messages carry dicts, lists, strings and integers only (docs/protocol.md). Floats are
refused rather than canonicalised: ECMAScript number formatting is where JCS implementations
disagree, and a measured value must reach the platform as the decimal the meter showed, so
values travel as decimal strings. Booleans and null are refused too, to keep every verifier's
type checks trivial. Anything refused raises with the key path, e.g.
`body.samples[3][3]: floats are not allowed in signed messages; use a decimal string`.
"""

from __future__ import annotations

import json
from typing import Any

# Number.MAX_SAFE_INTEGER. 2**53 itself is a double, but so is 2**53 + 1 once a JavaScript
# (or any double-based) parser reads it, so the I-JSON safe range is the interoperable one.
MAX_SAFE_INTEGER = 2**53 - 1

# ECMAScript JSON.stringify escapes: the short forms, other C0 controls as \u00xx (lowercase
# hex), and nothing else — DEL, U+2028/2029 and non-BMP characters stay literal UTF-8.
_ESCAPES: dict[int, str] = {i: f"\\u{i:04x}" for i in range(0x20)}
_ESCAPES.update({
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\b"): "\\b",
    ord("\f"): "\\f",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
})


# For the plain values _plain() admits, the stdlib's C encoder writes exactly JCS: the same
# escapes (lowercase \u00xx for other C0 controls, nothing else escaped with ensure_ascii off),
# and sort_keys' code-point order equals UTF-16 order while no key leaves the BMP. It is ~3x
# faster than the reference writer below, which matters on ARM gateways sealing big batches.
_FAST = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, check_circular=False,
    allow_nan=False,
)


def canonical(obj: Any) -> bytes:
    """The JCS canonical UTF-8 bytes of `obj` (dict with str keys, list/tuple, str, int)."""
    if _plain(obj):
        try:
            return _FAST.encode(obj).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let the reference writer name where it is
    return _reference(obj)


def canonical_string(s: str) -> str:
    """The JCS form of one string, quotes included, as text (for writers that splice strings
    into canonical JSON they build themselves, like agent/protocol/sample_rows.py)."""
    return _string(s, "")


def _plain(obj: Any) -> bool:
    """Exactly str/int/list/tuple/dict (no subclasses), safe integers, BMP-only keys."""
    t = type(obj)
    if t is str:
        return True
    if t is int:
        return -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER
    if t is list or t is tuple:
        for x in obj:
            tx = type(x)
            if tx is str:
                continue
            if tx is int:
                if not -MAX_SAFE_INTEGER <= x <= MAX_SAFE_INTEGER:
                    return False
            elif not _plain(x):
                return False
        return True
    if t is dict:
        for k, v in obj.items():
            if type(k) is not str or (not k.isascii() and max(k) > "\uffff"):
                return False
            if not _plain(v):
                return False
        return True
    return False


def _reference(obj: Any) -> bytes:
    """The straightforward JCS writer: any input, and errors that name the key path."""
    parts: list[str] = []
    _write(obj, parts, "")
    # Every string was checked for lone surrogates on the way, so this cannot fail.
    return "".join(parts).encode("utf-8")


def _write(obj: Any, out: list[str], path: str) -> None:
    # bool before int: True is an int to Python but not to a JSON verifier.
    if isinstance(obj, bool) or obj is None:
        raise TypeError(
            f"{_where(path)}: {'booleans' if obj is not None else 'null'} are not allowed in "
            "signed messages; use an integer or a string"
        )
    if isinstance(obj, str):
        out.append(_string(obj, path))
    elif isinstance(obj, int):
        if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise ValueError(
                f"{_where(path)}: integer {obj} is outside ±(2^53−1); send it as a decimal string"
            )
        # int.__repr__, not str(): an IntEnum member must not print its name.
        out.append(int.__repr__(obj))
    elif isinstance(obj, dict):
        out.append("{")
        for i, (key, value) in enumerate(_sorted_items(obj, path)):
            if i:
                out.append(",")
            out.append(_string(key, path))
            out.append(":")
            _write(value, out, f"{path}.{key}" if path else key)
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            _write(value, out, f"{path}[{i}]")
        out.append("]")
    elif isinstance(obj, float):
        raise TypeError(
            f"{_where(path)}: floats are not allowed in signed messages; use a decimal string"
        )
    else:
        raise TypeError(
            f"{_where(path)}: {type(obj).__name__} is not allowed in signed messages "
            "(only dict, list, str and int)"
        )


def _sorted_items(obj: dict[Any, Any], path: str) -> list[tuple[str, Any]]:
    for key in obj:
        if not isinstance(key, str):
            raise TypeError(f"{_where(path)}: object key {key!r} is not a string")
    try:
        # RFC 8785 §3.2.3: compare keys as UTF-16 code units. UTF-16-BE bytes compare in the
        # same order; plain str order differs once a key has a character above U+FFFF.
        return sorted(obj.items(), key=lambda kv: kv[0].encode("utf-16-be"))
    except UnicodeEncodeError:
        bad = next(k for k in obj if not _encodable(k))
        raise ValueError(f"{_where(path)}: object key {bad!r} contains a lone surrogate") from None


def _string(s: str, path: str) -> str:
    if not s.isascii() and not _encodable(s):
        raise ValueError(f"{_where(path)}: string {s!r} contains a lone surrogate (not UTF-8)")
    return '"' + s.translate(_ESCAPES) + '"'


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(path: str) -> str:
    return path or "(top level)"
