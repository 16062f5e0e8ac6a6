"""CJ/T 188: frames from a public implementation decoded to their stated values, unit codes,
and the driver against simulated water and heat meters on a real pty pair."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import MeterError, Quality
from drivers.bcd import address_bytes
from drivers.cjt188 import Cjt188Driver
from drivers.cjt188_frame import (
    BadFrame,
    convert_unit,
    error_reply,
    find_frame,
    parse_frame,
    read_request,
    reply_values,
    status_text,
)
from drivers.di_layout import decode_point, resolve_point
from drivers.model import BusConfig, FrameOptions, MeterConfig, PointConfig
from hil.serial_pair import serial_pair
from hil.sim_di import DiLine, di_meter

# Frames from GitHub aixiwang/python_cjt188 (python_cjt188.py, BSD): the read request it
# checks its encoder against, and the reply of its DN15 water meter (address 12 00 00 00 00
# 00 00) its decoder is checked with. That meter echoes the DI as 90 1F (high byte first)
# and the request there sends it the same way: the vendor deviation `di_order`.
AIXIWANG_REQUEST = "68 10 12 00 00 00 00 00 00 01 03 90 1F 00 3D 16"
AIXIWANG_REPLY = ("FE FE FE 68 10 12 00 00 00 00 00 00 81 16 90 1F 00 10 00 10 00 2C"
                  " 10 00 10 00 2C 00 00 00 00 00 00 00 00 FF 67 16")
WATER = FrameOptions(meter_type="10", di_order="high-first")


def point(name: str, field: str, unit: str, frame: FrameOptions = WATER) -> PointConfig:
    p = resolve_point(PointConfig(name=name, di="901F", field=field, unit=unit), "cjt188", frame)
    assert isinstance(p, PointConfig), p
    return p


def test_public_request_frame_byte_for_byte() -> None:
    address = address_bytes("12", 7)
    assert read_request(0x10, address, "901F", 0, "high-first", preamble=0) == bytes.fromhex(AIXIWANG_REQUEST)
    # The standard's order sends 1F 90: same frame otherwise, checksum 3D as well (a sum).
    assert read_request(0x10, address, "901F", 0, preamble=0).hex(" ") == \
        "68 10 12 00 00 00 00 00 00 01 03 1f 90 00 3d 16"


def test_public_reply_decodes_to_1000_10_m3() -> None:
    frame = parse_frame(bytes.fromhex(AIXIWANG_REPLY))
    assert frame.meter_type == 0x10 and frame.control == 0x81
    assert frame.address == address_bytes("12", 7)
    values = reply_values(frame, "901F")
    assert decode_point(values, point("volume", "current_flow", "m3")) == pytest.approx(1000.10)
    assert decode_point(values, point("volume_settlement", "settlement_flow", "m3")) == pytest.approx(1000.10)
    # The same meter's reading in litres, converted from its unit code 2Ch (m3).
    assert decode_point(values, point("volume_l", "current_flow", "L")) == pytest.approx(1000100)


def test_heat_meter_layout_and_unit_codes() -> None:
    heat = FrameOptions(meter_type="20")
    assert point("heat", "current_heat", "GJ", heat).at == 5
    assert point("t", "supply_temperature", "°C", heat).format == "XXXX.XX"
    assert convert_unit(1.0, 0x11, "kWh") == pytest.approx(277.7778, rel=1e-6)  # GJ -> kWh
    assert convert_unit(2.5, 0x08, "GJ") == pytest.approx(9.0)  # MWh -> GJ
    assert convert_unit(3.6, 0x0E, "kWh") == pytest.approx(1.0)  # MJ -> kWh
    assert convert_unit(1.5, 0x35, "m3/h") == 1.5
    with pytest.raises(ValueError, match="cannot be given in kWh"):
        convert_unit(1.0, 0x2C, "kWh")
    with pytest.raises(ValueError, match="unknown unit code"):
        convert_unit(1.0, 0x77, "kWh")
    assert "no field" in str(resolve_point(PointConfig(name="x", di="901F", field="current_heat"), "cjt188",
                                           FrameOptions(meter_type="10")))


def test_error_reply_and_bad_checksum() -> None:
    raw = error_reply(0x10, address_bytes("12", 7), 5, b"\x05\x00")
    frame = parse_frame(raw)
    assert frame.control == 0xC1 and frame.abnormal
    assert status_text(frame.data[-2:]) == "status 0500 (valve closed, battery low)"
    bad = bytearray(bytes.fromhex(AIXIWANG_REPLY))
    bad[-2] ^= 0x10
    with pytest.raises(BadFrame):
        find_frame(bad)


def bus(device: str) -> BusConfig:
    return BusConfig(name="cjt-1", kind="cjt188", device=device, parity="N", timeout=0.2, retries=0)


HEAT_POINTS = [
    PointConfig(name="heat_energy", di="901F", field="current_heat", unit="kWh", kind="counter"),
    PointConfig(name="heat_settlement", di="901F", field="settlement_heat", unit="kWh"),
    PointConfig(name="heat_power", di="901F", field="heat_power", unit="kW"),
    PointConfig(name="flow_rate", di="901F", field="flow_rate", unit="m3/h"),
    PointConfig(name="volume", di="901F", field="cumulative_flow", unit="m3", kind="counter"),
    PointConfig(name="temperature_supply", di="901F", field="supply_temperature", unit="°C"),
    PointConfig(name="temperature_return", di="901F", field="return_temperature", unit="°C"),
    PointConfig(name="operating_hours", di="901F", field="working_hours", unit="h"),
]


def test_heat_meter_read_in_one_request() -> None:
    frame = FrameOptions(meter_type="20")

    async def go() -> None:
        sim = di_meter("heat-1", "11223344556677", "cjt188", HEAT_POINTS, frame=frame)
        m = MeterConfig(name="heat-1", bus="cjt-1", address="11223344556677", frame=frame)
        m.points = list(sim.points)
        with serial_pair() as (meter_side, agent_side):
            line = await DiLine(meter_side, [sim], "cjt188").start()
            driver = Cjt188Driver(bus(agent_side))
            try:
                readings = list(await driver.read(m))
                assert driver.requests_sent == 1  # every field from one 901F
                for r in readings:
                    p = next(p for p in m.points if p.name == r.point)
                    assert r.quality == Quality.GOOD, r
                    assert sim.matches(r.point, r.ts, f"{r.value:.{p.value_decimals}f}"), r
                sim.mode = "exception"
                with pytest.raises(MeterError) as e:
                    await driver.read(m)
                assert e.value.quality == Quality.EXCEPTION and "C1h" in str(e.value)
                assert "valve abnormal" in str(e.value)
                sim.mode = "silent"
                with pytest.raises(MeterError) as e:
                    await driver.read(m)
                assert e.value.quality == Quality.TIMEOUT
                sim.mode = "ok"
                assert await driver.read_address() == "11223344556677 type 20"
            finally:
                await driver.close()
                await line.stop()
    asyncio.run(go())


def test_vendor_deviations_are_frame_settings() -> None:
    # A water meter that wants 90 1F, sends values high byte first and no SER byte in replies.
    odd = FrameOptions(meter_type="10", di_order="high-first", value_order="high-first", ser=False)
    points = [PointConfig(name="volume", di="901F", field="current_flow", unit="m3", kind="counter"),
              PointConfig(name="volume_settlement", di="901F", field="settlement_flow", unit="m3")]

    async def go() -> None:
        sim = di_meter("w", "42", "cjt188", points, frame=odd)
        m = MeterConfig(name="w", bus="cjt-1", address="42", frame=odd)
        m.points = list(sim.points)
        plain = MeterConfig(name="w2", bus="cjt-1", address="42", frame=FrameOptions(meter_type="10"))
        plain.points = list(sim.points)
        half = MeterConfig(name="w3", bus="cjt-1", address="42",
                           frame=FrameOptions(meter_type="10", di_order="high-first"))
        half.points = list(sim.points)
        with serial_pair() as (meter_side, agent_side):
            line = await DiLine(meter_side, [sim], "cjt188").start()
            driver = Cjt188Driver(bus(agent_side))
            try:
                readings = list(await driver.read(m))
                for r in readings:
                    assert r.quality == Quality.GOOD, r
                    assert sim.matches(r.point, r.ts, f"{r.value:.2f}"), r
                # With the standard's DI order the meter refuses the request (C1h) ...
                with pytest.raises(MeterError) as e:
                    await driver.read(plain)
                assert e.value.quality == Quality.EXCEPTION
                # ... and with the DI right but values and SER as the standard has them, the
                # values sit one byte off and reversed: no true value comes out.
                wrong = list(await driver.read(half))
                assert not any(r.quality == Quality.GOOD and sim.matches(r.point, r.ts, f"{r.value:.2f}")
                               for r in wrong)
            finally:
                await driver.close()
                await line.stop()
    asyncio.run(go())
