"""DL/T 645-2007 frames: building requests, finding and checking replies, decoding values.

Pure functions, no I/O (the driver is drivers/dlt645.py; the HIL meter uses the same
functions to answer). The frame, per DL/T 645-2007 §6 (帧格式):

    FE FE FE FE | 68 | A0 … A5 | 68 | C | L | DATA (L bytes) | CS | 16

- FE…: optional wake-up preamble, not part of the frame; replies may carry one too.
- A0…A5: the meter address, 12 BCD digits, least significant pair first (the printed
  number reversed pairwise); AA…AA is "whoever listens" (read-address only on a one-meter
  line), 99…99 broadcast.
- C: bit 7 direction (1 = reply), bit 6 abnormal reply, bit 5 more frames follow, bits 4–0
  the function: 11h read data, 12h read follow-up data, 13h read address.
- Every DATA byte travels +33h and is taken −33h on receipt.
- CS: byte sum mod 256 from the first 68 through the last data byte.

A read (11h) carries the 4-byte data identifier DI3 DI2 DI1 DI0, sent DI0 first. The reply
echoes the DI and appends the value (91h), or says more frames follow (B1h: ask for each with
12h, the DI and a sequence number), or carries one error byte (D1h, §7.1.2 表 10 错误信息字).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.bcd import checksum

PREAMBLE = b"\xfe\xfe\xfe\xfe"
READ = 0x11
READ_FOLLOW_UP = 0x12
READ_ADDRESS = 0x13
REPLY = 0x80
ABNORMAL = 0x40
MORE = 0x20
FUNCTION = 0x1F
WILDCARD = b"\xaa" * 6  # "any meter": read-address on a line with one meter
MAX_DATA = 200  # DL/T 645-2007 §6: L ≤ 200 for reads
ADDRESS_BYTES = 6

# The error byte of an abnormal reply (DL/T 645-2007 表 10), bit by bit.
ERROR_BITS = (
    (0x01, "other error"),
    (0x02, "no such data"),
    (0x04, "password wrong or not authorised"),
    (0x08, "baud rate cannot be changed"),
    (0x10, "too many annual time zones"),
    (0x20, "too many daily time slots"),
    (0x40, "too many tariffs"),
)


class BadFrame(ValueError):
    """Bytes that look like a frame but fail its checks (checksum, end byte)."""


@dataclass(frozen=True)
class Frame:
    """A checked frame; `data` already has the 33h taken off."""

    address: bytes
    control: int
    data: bytes

    @property
    def function(self) -> int:
        return self.control & FUNCTION

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY)

    @property
    def abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def more(self) -> bool:
        return bool(self.control & MORE)


def error_text(code: int) -> str:
    """The error byte's meaning: `no such data (02h)`."""
    names = [name for bit, name in ERROR_BITS if code & bit]
    return f"{', '.join(names) or 'unspecified error'} ({code:02X}h)"


def di_bytes(di: str) -> bytes:
    """A data identifier as written in the standard (`00010000` = DI3 DI2 DI1 DI0) to its
    four bytes in that order. ValueError unless 8 hex digits."""
    if len(di) != 8:
        raise ValueError(f"expected a DI of 8 hex digits like 00010000, got {di!r}")
    return bytes.fromhex(di)


def _plus33(data: bytes) -> bytes:
    return bytes((b + 0x33) & 0xFF for b in data)


def _minus33(data: bytes) -> bytes:
    return bytes((b - 0x33) & 0xFF for b in data)


def encode_frame(address: bytes, control: int, data: bytes = b"", preamble: bytes = PREAMBLE) -> bytes:
    """A whole frame; `data` is given as meant (the 33h is added here)."""
    if len(address) != ADDRESS_BYTES:
        raise ValueError(f"a DL/T 645 address has 6 bytes, got {len(address)}")
    if len(data) > 255:
        raise ValueError(f"data of {len(data)} bytes does not fit one frame")
    body = b"\x68" + address + b"\x68" + bytes([control, len(data)]) + _plus33(data)
    return preamble + body + bytes([checksum(body), 0x16])


def read_request(address: bytes, di: str, preamble: bytes = PREAMBLE) -> bytes:
    """Read data (11h) of one DI."""
    return encode_frame(address, READ, di_bytes(di)[::-1], preamble)


def follow_up_request(address: bytes, di: str, seq: int, preamble: bytes = PREAMBLE) -> bytes:
    """Read follow-up data (12h): the DI and the number of the frame asked for (1, 2, …)."""
    return encode_frame(address, READ_FOLLOW_UP, di_bytes(di)[::-1] + bytes([seq & 0xFF]), preamble)


def read_address_request(preamble: bytes = PREAMBLE) -> bytes:
    """Read address (13h) to AA…AA: answered by the only meter on the line."""
    return encode_frame(WILDCARD, READ_ADDRESS, b"", preamble)


def scan(buf: bytes | bytearray, header: int, length_at: int, second_68_at: int | None,
         max_data: int) -> tuple[bytes | None, int]:
    """Find the first frame in `buf`: (frame bytes or None, bytes to drop from the front).

    A frame starts with 68, has its data length at `length_at` (and, for DL/T 645, a second
    68 at `second_68_at`), then data, CS and 16. (None, n) with n > 0: n bytes of noise to
    drop; (None, 0): wait for more bytes. Raises BadFrame with the frame's length in `args[1]`
    when the frame is complete but its checksum or end byte is wrong.
    """
    i = 0
    n = len(buf)
    bad: BadFrame | None = None  # noise can look like a frame start: a good frame later wins
    while i < n:
        if buf[i] != 0x68:
            i += 1
            continue
        if n - i <= length_at:
            break
        if (second_68_at is not None and buf[i + second_68_at] != 0x68) or buf[i + length_at] > max_data:
            i += 1
            continue
        total = header + buf[i + length_at] + 2
        if n - i < total:
            break
        frame = bytes(buf[i : i + total])
        if checksum(frame[:-2]) != frame[-2] or frame[-1] != 0x16:
            if bad is None:
                what = "checksum" if checksum(frame[:-2]) != frame[-2] else "end byte"
                bad = BadFrame(f"{what} wrong in {frame.hex(' ')[:120]}", i + total)
            i += 1
            continue
        return frame, i
    if bad is not None:
        raise bad
    return None, i


def find_frame(buf: bytes | bytearray) -> tuple[Frame | None, int]:
    """The first DL/T 645 frame in `buf` and how many bytes it (and any noise before it) used.

    (None, k): no whole frame yet, drop k bytes of noise. Raises BadFrame (args[1] = bytes
    used) for a frame with a wrong checksum or end byte.
    """
    raw, start = scan(buf, header=10, length_at=9, second_68_at=7, max_data=MAX_DATA + 55)
    if raw is None:
        return None, start
    frame = Frame(address=raw[1:7], control=raw[8], data=_minus33(raw[10:-2]))
    return frame, start + len(raw)


def parse_frame(raw: bytes) -> Frame:
    """Exactly one frame (preamble allowed). ValueError/BadFrame otherwise."""
    frame, used = find_frame(raw.lstrip(b"\xfe"))
    if frame is None or used != len(raw.lstrip(b"\xfe")):
        raise ValueError(f"not one whole DL/T 645 frame: {raw[:64].hex(' ')}")
    return frame


# -- replies (what a meter sends; used by the simulator and the tests) ----------------------


def read_reply(address: bytes, di: str, value: bytes, more: bool = False, preamble: bytes = PREAMBLE) -> bytes:
    """Normal reply to a read: 91h (B1h when more frames follow) with the DI and the value."""
    control = REPLY | READ | (MORE if more else 0)
    return encode_frame(address, control, di_bytes(di)[::-1] + value, preamble)


def follow_up_reply(address: bytes, di: str, value: bytes, seq: int, more: bool = False,
                    preamble: bytes = PREAMBLE) -> bytes:
    """Reply to a follow-up read: 92h (B2h when still more follow), DI, value, sequence number."""
    control = REPLY | READ_FOLLOW_UP | (MORE if more else 0)
    return encode_frame(address, control, di_bytes(di)[::-1] + value + bytes([seq & 0xFF]), preamble)


def error_reply(address: bytes, function: int, code: int, preamble: bytes = PREAMBLE) -> bytes:
    """Abnormal reply (D1h to a read): one error byte."""
    return encode_frame(address, REPLY | ABNORMAL | function, bytes([code]), preamble)


def address_reply(address: bytes, preamble: bytes = PREAMBLE) -> bytes:
    """Reply to read-address (93h): the meter's own address as data."""
    return encode_frame(address, REPLY | READ_ADDRESS, address, preamble)
