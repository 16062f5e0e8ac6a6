"""Packed BCD as the Chinese meter protocols send it (DL/T 645-2007, CJ/T 188-2004/2018).

Values are packed BCD, two digits per byte, least significant byte first on the wire unless a
vendor deviates. The standards describe each value by a digit pattern such as `XXXXXX.XX`
(8 digits, 4 bytes, 2 decimal places) or `YYMMDDhhmm` (a time, 5 bytes); `parse_format` reads
that pattern. Signed values (DL/T 645-2007 §A, currents, powers, power factor) carry the sign
in bit 7 of the most significant byte, the rest being the magnitude.
"""

from __future__ import annotations

import re

_FORMAT = re.compile(r"^[A-Za-z]+(\.[A-Za-z]+)?$")


class NotBcd(ValueError):
    """A nibble above 9: the meter sent no number (many send FF… for "no value")."""


def parse_format(fmt: str) -> tuple[int, int]:
    """(bytes, decimal places) of a digit pattern: `XXXXXX.XX` -> (4, 2), `XXX.X` -> (2, 1)."""
    if not _FORMAT.match(fmt):
        raise ValueError(f"expected a digit pattern like XXXXXX.XX or YYMMDDhhmm, got {fmt!r}")
    whole, _, frac = fmt.partition(".")
    digits = len(whole) + len(frac)
    if digits % 2:
        raise ValueError(f"{fmt!r} has {digits} digits; BCD needs an even number")
    return digits // 2, len(frac)


def bcd_to_int(data: bytes, low_first: bool = True, signed: bool = False) -> int:
    """The integer the BCD digits spell. Raises NotBcd on a nibble above 9."""
    ordered = data[::-1] if low_first else data
    sign = 1
    if signed and ordered:
        if ordered[0] & 0x80:
            sign = -1
        ordered = bytes([ordered[0] & 0x7F]) + ordered[1:]
    value = 0
    for b in ordered:
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise NotBcd(f"byte {b:02X} is not BCD")
        value = value * 100 + hi * 10 + lo
    return sign * value


def int_to_bcd(value: int, length: int, low_first: bool = True, signed: bool = False) -> bytes:
    """`value` as `length` BCD bytes. Raises ValueError if it does not fit."""
    negative = value < 0
    if negative and not signed:
        raise ValueError(f"{value} is negative but the field is unsigned")
    digits = f"{abs(value):0{2 * length}d}"
    if len(digits) > 2 * length:
        raise ValueError(f"{value} does not fit in {length} BCD bytes")
    out = bytearray(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2))
    if signed:
        if out[0] & 0x80:
            raise ValueError(f"{value} does not fit in {length} signed BCD bytes")
        if negative:
            out[0] |= 0x80
    return bytes(out[::-1] if low_first else out)


def decode_bcd(data: bytes, decimals: int, low_first: bool = True, signed: bool = False) -> float:
    return bcd_to_int(data, low_first, signed) / 10**decimals


def encode_bcd(value: float, length: int, decimals: int, low_first: bool = True,
               signed: bool = False) -> bytes:
    return int_to_bcd(round(value * 10**decimals), length, low_first, signed)


def checksum(data: bytes) -> int:
    """Both standards' CS: the byte sum modulo 256."""
    return sum(data) & 0xFF


def address_bytes(nameplate: str, length: int) -> bytes:
    """The printed meter number as wire bytes: BCD, least significant pair first.

    `123456789012` -> 12 90 78 56 34 12. Shorter numbers are zero-padded on the left, as the
    number printed on the nameplate omits leading zeros on some models.
    """
    if not nameplate.isdigit() or len(nameplate) > 2 * length:
        raise ValueError(f"expected up to {2 * length} digits, got {nameplate!r}")
    return int_to_bcd(int(nameplate), length)


def address_text(raw: bytes) -> str:
    """Wire address bytes back to the printed number (all digits, leading zeros kept)."""
    return "".join(f"{b:02X}" for b in reversed(raw))
