"""Loading DL/T 645 / CJ/T 188 buses and meters: resolution, the daily freeze, and every
mistake as one line naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config

HEAD = """[agent]
gateway = "gw1"
enterprise = "91370600780790663W"
[platform]
host = "127.0.0.1"
[signing]
key_file = "/nonexistent/key"

[[bus]]
name = "dlt"
kind = "dlt645"
device = "/dev/ttyS2"
baud = 2400

[[bus]]
name = "mbus"
kind = "cjt188"
device = "/dev/ttyS3"
"""


def load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    f = tmp_path / "agent.toml"
    f.write_text(HEAD + body, encoding="utf-8")
    return load_config(f)


def errors(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, body)
    assert all("\n" not in line for line in e.value.lines)
    return e.value.lines


def test_profile_meters_resolve_with_freeze_and_frame(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
[[meter]]
name = "incomer"
bus = "dlt"
address = "123456789012"
profile = "chint-dtsu666-dlt645"
[[meter.point]]
name = "reactive_power"
di = "02040000"
unit = "kvar"

[[meter]]
name = "heat"
bus = "mbus"
address = "11223344556677"
profile = "huizhong-crl-heat-cjt188"
frame = { meter_type = "21" }
""")
    incomer, heat = cfg.meter
    assert incomer.freezes() == {"import_active_energy": "import_active_energy_freeze"}
    energy = next(p for p in incomer.points if p.name == "import_active_energy")
    assert (energy.format, energy.signed, energy.at, energy.modulus) == ("XXXXXX.XX", False, 0, 1000000.0)
    assert energy.value_decimals == 2
    assert next(p for p in incomer.points if p.name == "reactive_power").signed
    assert heat.frame is not None and heat.frame.meter_type == "21"  # the meter's own framing wins
    assert next(p for p in heat.points if p.name == "heat_energy").at == 5


def test_mistakes(tmp_path: Path) -> None:
    lines = errors(tmp_path, """
[[meter]]
name = "a"
bus = "dlt"
address = "1234567890123"
[[meter.point]]
name = "x"
di = "04000401"

[[meter]]
name = "b"
bus = "dlt"
address = "1"
[[meter.point]]
name = "e"
di = "00010000"
[[meter.point]]
name = "f"
di = "05060101"
freeze_of = "e"

[[meter]]
name = "c"
bus = "dlt"
address = "1"
unit = 4
[[meter.point]]
name = "e"
di = "00010000"

[[meter]]
name = "d"
bus = "mbus"
address = "5"
[[meter.point]]
name = "v"
di = "901F"
field = "current_flow"
""")
    text = "\n".join(lines)
    assert "meter[0].address: expected up to 12 digits for dlt645" in text
    assert "meter[0].point.x: DI 04000401 is not in the built-in table: give its format" in text
    assert "meter[1].point.f.freeze_of: 'e' is not a counter" in text
    assert "meter[2].address: address 1 on bus 'dlt' is already meter[1]" in text
    assert "meter[3].frame.meter_type: required for CJ/T 188" in text
