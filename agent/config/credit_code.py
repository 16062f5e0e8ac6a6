"""Unified social credit code (GB 32100) check character."""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_WEIGHTS = [pow(3, i, 31) for i in range(17)]


def credit_code_problem(code: str) -> str | None:
    """None when `code` is a well-formed code with a valid check character, else what is wrong.

    Early pilot codes can fail the check yet be legal, so callers warn rather than reject.
    """
    if len(code) != 18:
        return f"expected 18 characters, got {len(code)}"
    bad = sorted({c for c in code if c not in ALPHABET})
    if bad:
        return f"characters not in the GB 32100 alphabet: {''.join(bad)}"
    total = sum(ALPHABET.index(c) * w for c, w in zip(code[:17], _WEIGHTS, strict=True))
    expected = ALPHABET[(31 - total % 31) % 31]
    if code[17] != expected:
        return f"check character is {code[17]!r}, expected {expected!r}"
    return None
