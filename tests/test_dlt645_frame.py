"""DL/T 645-2007 frames byte for byte, values decoded, and every malformed reply refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import cjt188_frame as cjt
from drivers.bcd import NotBcd, address_bytes, address_text, bcd_to_int, checksum, decode_bcd, encode_bcd, parse_format
from drivers.di_layout import decode_point, resolve_point
from drivers.dlt645_frame import (
    BadFrame,
    encode_frame,
    error_reply,
    error_text,
    find_frame,
    follow_up_reply,
    follow_up_request,
    parse_frame,
    read_address_request,
    read_reply,
    read_request,
)
from drivers.model import PointConfig

WORKED = bytes.fromhex("FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16")


def test_the_worked_frame_byte_for_byte() -> None:
    # Read forward active total energy (DI 00 01 00 00) from meter 123456789012. The checksum,
    # summed by hand from the first 68 to the last data byte: 68+12+90+78+56+34+12+68+11+04
    # +33+33+34+33 = 0x368, so CS = 68h.
    address = address_bytes("123456789012", 6)
    assert address == bytes.fromhex("12 90 78 56 34 12")
    assert read_request(address, "00010000") == WORKED
    assert checksum(WORKED[4:-2]) == 0x68


def test_its_reply_decodes_to_12345_67_kwh() -> None:
    address = address_bytes("123456789012", 6)
    # On the wire after the DI: 9A 78 56 34, i.e. 67 45 23 01 once 33h is taken off each byte.
    body = bytes.fromhex("68 12 90 78 56 34 12 68 91 08 33 33 34 33 9A 78 56 34")
    reply = b"\xfe\xfe" + body + bytes([checksum(body), 0x16])
    assert reply == read_reply(address, "00010000", bytes.fromhex("67452301"), preamble=b"\xfe\xfe")
    frame = parse_frame(reply)
    assert frame.address == address and frame.control == 0x91 and not frame.more
    assert frame.data[:4] == bytes.fromhex("00 00 01 00")
    point = resolve_point(PointConfig(name="import_active_energy", di="00010000", unit="kWh"), "dlt645", None)
    assert isinstance(point, PointConfig) and point.format == "XXXXXX.XX"
    assert decode_point(frame.data[4:], point) == pytest.approx(12345.67)


def test_signed_bcd_sign_in_bit_7_of_the_top_byte() -> None:
    # Phase A current -1.234 A (XXX.XXX, 3 bytes): 001234 with bit 7 of the top byte set.
    assert bcd_to_int(bytes.fromhex("34 12 80"), signed=True) == -1234
    assert bcd_to_int(bytes.fromhex("34 12 00"), signed=True) == 1234
    point = resolve_point(PointConfig(name="current_a", di="02020100", unit="A"), "dlt645", None)
    assert isinstance(point, PointConfig) and point.signed
    assert decode_point(bytes.fromhex("34 12 80"), point) == pytest.approx(-1.234)
    # Active power -12.3456 kW (XX.XXXX) as the meter sends it.
    power = resolve_point(PointConfig(name="active_power", di="02030000", unit="kW"), "dlt645", None)
    assert isinstance(power, PointConfig)
    assert decode_point(encode_bcd(-12.3456, 3, 4, signed=True), power) == pytest.approx(-12.3456)


@given(st.integers(min_value=-(10**7) + 1, max_value=10**7 - 1))
def test_signed_bcd_round_trips(n: int) -> None:
    assert bcd_to_int(encode_bcd(n / 100, 4, 2, signed=True), signed=True) == n


@given(st.integers(min_value=0, max_value=10**8 - 1))
def test_unsigned_bcd_round_trips_in_both_byte_orders(n: int) -> None:
    for low_first in (True, False):
        assert decode_bcd(encode_bcd(n / 100, 4, 2, low_first), 2, low_first) == pytest.approx(n / 100)


def test_formats() -> None:
    assert parse_format("XXXXXX.XX") == (4, 2)
    assert parse_format("XXX.X") == (2, 1)
    assert parse_format("YYMMDDhhmm") == (5, 0)
    with pytest.raises(ValueError):
        parse_format("XXX.XX")  # 5 digits
    with pytest.raises(NotBcd):
        bcd_to_int(b"\xff\xff\xff\xff")


def test_freeze_time_decodes_to_its_digits() -> None:
    point = resolve_point(PointConfig(name="freeze_time", di="05060001"), "dlt645", None)
    assert isinstance(point, PointConfig)
    # 2026-12-06 00:00, low byte first: 00 00 06 12 26
    assert decode_point(bytes.fromhex("00 00 06 12 26"), point) == 2612060000


def test_addresses() -> None:
    assert address_text(address_bytes("123456789012", 6)) == "123456789012"
    assert address_bytes("1", 6) == bytes.fromhex("01 00 00 00 00 00")
    with pytest.raises(ValueError):
        address_bytes("1234567890123", 6)
    assert read_address_request().hex(" ") == "fe fe fe fe 68 aa aa aa aa aa aa 68 13 00 df 16"


def test_error_reply_names_the_error_byte() -> None:
    address = address_bytes("1", 6)
    frame = parse_frame(error_reply(address, 0x11, 0x02))
    assert frame.control == 0xD1 and frame.abnormal
    assert frame.data == b"\x02"
    assert error_text(frame.data[0]) == "no such data (02h)"
    assert error_text(0x05) == "other error, password wrong or not authorised (05h)"


def test_bad_checksum_is_refused() -> None:
    good = read_reply(address_bytes("1", 6), "00010000", bytes(4))
    bad = good[:-2] + bytes([good[-2] ^ 0x01]) + good[-1:]
    with pytest.raises(BadFrame, match="checksum"):
        find_frame(bytearray(bad))
    wrong_end = good[:-1] + b"\x15"
    with pytest.raises(BadFrame, match="end byte"):
        find_frame(bytearray(wrong_end))


def test_frames_are_found_in_noise_and_partial_input_waits() -> None:
    good = read_reply(address_bytes("7", 6), "00010000", bytes(4))
    noisy = bytearray(b"\x00\x68\x01\xff" + good + b"\x01")
    frame, used = find_frame(noisy)
    assert frame is not None and frame.control == 0x91
    assert noisy[used:] == b"\x01"
    frame, used = find_frame(bytearray(good[:-3]))
    assert frame is None and used == 4  # the preamble may go, the rest is awaited


def test_follow_up_frames() -> None:
    address = address_bytes("1", 6)
    first = parse_frame(read_reply(address, "00010000", b"\x01\x02", more=True))
    assert first.control == 0xB1 and first.more
    assert parse_frame(follow_up_request(address, "00010000", 1)).data == bytes.fromhex("00 00 01 00 01")
    last = parse_frame(follow_up_reply(address, "00010000", b"\x03\x04", seq=1))
    assert last.control == 0x92 and not last.more and last.data[-1] == 1


def test_unknown_di_needs_a_format_and_dlt_points_need_a_di() -> None:
    assert "format" in str(resolve_point(PointConfig(name="x", di="04000401"), "dlt645", None))
    assert "required" in str(resolve_point(PointConfig(name="x", register=3), "dlt645", None))
    assert "8 hex" in str(resolve_point(PointConfig(name="x", di="901F"), "dlt645", None))


@given(st.binary(min_size=6, max_size=6), st.integers(0, 0xFF), st.binary(max_size=60),
       st.binary(max_size=20).filter(lambda b: 0x68 not in b))
def test_frames_round_trip_behind_any_noise(address: bytes, control: int, data: bytes, noise: bytes) -> None:
    raw = encode_frame(address, control, data)
    frame, used = find_frame(bytearray(noise + raw))
    assert frame is not None and used == len(noise) + len(raw)
    assert (frame.address, frame.control, frame.data) == (address, control, data)
    cj = cjt.encode_frame(0x20, address + b"\x00", control, data)
    got, used = cjt.find_frame(bytearray(noise + cj))
    assert got is not None and (got.address, got.control, got.data) == (address + b"\x00", control, data)


@given(st.binary(max_size=300))
def test_hostile_bytes_give_a_frame_a_bad_frame_or_a_wait(junk: bytes) -> None:
    # Whatever arrives, the finders end, consume within the buffer and raise nothing but BadFrame.
    for find in (find_frame, cjt.find_frame):
        try:
            _frame, used = find(bytearray(junk))
        except BadFrame as e:
            assert 0 < e.args[1] <= len(junk)
            continue
        assert 0 <= used <= len(junk)
