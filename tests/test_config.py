"""Malformed configs: one clear line naming file, key path and expectation; exit 78; no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.protocol.signing import generate_key
from drivers.model import MeterConfig

GOOD = """
[agent]
gateway = "gw-01"
enterprise = "91370600780790663W"

[platform]
host = "127.0.0.1"

[signing]
key_file = "/nonexistent/signing.key"

[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"

[[meter]]
name = "m1"
bus = "lan"
unit = 1
[[meter.point]]
name = "import_active_energy"
register = 0
type = "u32"
scale = 0.01
unit = "kWh"
kind = "counter"
"""


def with_key(tmp_path: Path, text: str) -> str:
    """The config with a real signing key and a data dir of the test's own: check-config
    checks both (a key it cannot load would stop the daemon)."""
    key = tmp_path / "signing.key"
    if not key.exists():
        generate_key(key)
    text = text.replace("/nonexistent/signing.key", str(key))
    return text.replace("[agent]\n", f'[agent]\ndata_dir = "{tmp_path / "data"}"\n', 1)


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "agent.toml"
    f.write_text(with_key(tmp_path, text), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(f)],
        capture_output=True, text=True, timeout=60,
    )


def test_good_config_passes_and_prints_plan(tmp_path: Path) -> None:
    r = check(tmp_path, GOOD)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    assert "holding 0..1" in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s + "\n[[[ not toml", "not valid TOML"),
        (lambda s: s.replace('register = 0', 'register = "zero"'),
         "meter[0].point[0].register: expected int, got str"),
        (lambda s: s.replace('type = "u32"', 'type = "float"'),
         'meter[0].point[0].type: expected one of u16,s16,u32,s32,u64,s64,f32,f64, got "float"'),
        (lambda s: s.replace('host = "127.0.0.1"\n\n[signing]', 'host = "127.0.0.1"\nhots = 1\n\n[signing]'),
         "platform.hots: unknown key"),
        (lambda s: s.replace('bus = "lan"', 'bus = "rs485-9"'),
         "meter[0].bus: unknown bus 'rs485-9' (buses: lan)"),
        (lambda s: s.replace('gateway = "gw-01"\n', ''), "agent.gateway: required key is missing"),
        (lambda s: s.replace('kind = "modbus-tcp"', 'kind = "modbus-tcp"\ndevice = "/dev/ttyS1"'),
         "bus[0].device: not used by kind modbus-tcp"),
        (lambda s: s.replace('unit = "kWh"', 'unit = "kWh"\ncode = "01-02"'),
         "meter[0].point[0].code: expected a data code PP-UU-EEEE-CCTTTT-DD"),
        (lambda s: s.replace('[agent]', '[agent]\ntimezone = "Mars/Olympus"'), "agent.timezone"),
        (lambda s: s.replace('[agent]', '[agent]\ntimezone = "Asia"'), "agent.timezone"),
        (lambda s: s.replace('unit = 1\n', 'unit = 1\nmax_registers = 1\n'),
         "meter[0].max_registers: point 'import_active_energy' is a u32 of 2 registers"),
    ],
)
def test_mistakes_give_one_line_and_exit_78(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    r = check(tmp_path, mutate(GOOD))
    assert r.returncode == 78, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'agent.toml'}: ")
    assert expected in lines[0]


def test_bad_credit_code_check_character_is_a_warning(tmp_path: Path) -> None:
    r = check(tmp_path, GOOD.replace("91370600780790663W", "91370600780790663X"))
    assert r.returncode == 0
    assert r.stderr.count("\n") == 1
    assert "warning:" in r.stderr and "agent.enterprise: check character is 'X', expected 'W'" in r.stderr


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "check-config", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert r.stderr.strip() == f"error: {tmp_path / 'nope.toml'}: file not found"


def test_profile_points_resolve_and_codes_apply() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "agent.example.toml"
    cfg = load_config(example)
    m = cfg.meter_named("workshop-a")
    assert m.points, "profile points resolved"
    energy = next(p for p in m.points if p.name == "import_active_energy")
    assert energy.code == "01-00-0000-020201-30"
    assert m.probe_point


def test_reserved_keys_are_unknown(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text(GOOD.replace('unit = 1\n', 'unit = 1\npoints = []\n'), encoding="utf-8")
    with pytest.raises(ConfigError, match="points: unknown key"):
        load_config(f)


def test_duplicate_unit_on_a_bus(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text(GOOD + GOOD[GOOD.index("[[meter]]"):].replace('name = "m1"', 'name = "m2"'), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"meter\[1\].unit: unit 1 on bus 'lan' is already meter\[0\]"):
        load_config(f)


def _meters(tmp_path: Path, extra: str) -> list[MeterConfig]:
    f = tmp_path / "a.toml"
    f.write_text(GOOD + extra, encoding="utf-8")
    return load_config(f).meter


def test_equal_points_of_different_meters_are_one_object(tmp_path: Path) -> None:
    # The daemon holds its config for life: 100 meters of one model must not cost 100 copies.
    copy = GOOD[GOOD.index("[[meter]]"):].replace('name = "m1"', 'name = "m2"').replace("unit = 1\n", "unit = 2\n")
    other = copy.replace('name = "m2"', 'name = "m3"').replace("unit = 2\n", "unit = 3\n").replace(
        "scale = 0.01", "scale = 0.1")
    m1, m2, m3 = _meters(tmp_path, copy + other)
    assert m1.points[0] is m2.points[0] and m1.point[0] is m2.point[0]
    assert m3.points[0] is not m1.points[0] and m3.points[0].scale == 0.1
    assert m1.points[0].unit is m3.points[0].unit  # equal strings are shared too


def test_a_code_override_does_not_leak_into_other_meters_of_the_same_profile(tmp_path: Path) -> None:
    meters = """
[[meter]]
name = "a"
bus = "lan"
unit = 2
profile = "acrel-dtsd1352"
[meter.codes]
import_active_energy = "01-00-0000-020201-10"

[[meter]]
name = "b"
bus = "lan"
unit = 3
profile = "acrel-dtsd1352"
"""
    _, a, b = _meters(tmp_path, meters)
    a_energy = next(p for p in a.points if p.name == "import_active_energy")
    b_energy = next(p for p in b.points if p.name == "import_active_energy")
    assert (a_energy.code, b_energy.code) == ("01-00-0000-020201-10", None)
    others = [(p, q) for p, q in zip(a.points, b.points, strict=True) if p.name != "import_active_energy"]
    assert others and all(p is q for p, q in others)


def test_points_cannot_be_changed_in_place(tmp_path: Path) -> None:
    (m,) = _meters(tmp_path, "")
    with pytest.raises(AttributeError):
        m.points[0].scale = 2.0  # type: ignore[misc]


def test_every_config_key_is_in_the_annotated_example() -> None:
    """The example is the reference a site edits: a key missing there is a key nobody finds."""
    import re

    import msgspec

    from agent.config import schema
    from drivers.model import BusConfig, MeterConfig, PointConfig

    text = (Path(__file__).resolve().parent.parent / "config" / "agent.example.toml").read_text()
    # A key is present when it is set, or shown commented out, at the start of a line.
    present = set(re.findall(r"^#?\s*([a-z0-9_]+)\s*=", text, flags=re.M))
    sections = set(re.findall(r"^#?\s*\[+([a-z_.]+)\]+", text, flags=re.M))
    not_keys = {"points", "source", "warnings"}  # filled by load_config
    missing = []
    for struct in (schema.AgentSection, schema.PlatformSection, schema.SigningSection,
                   schema.ScheduleSection, schema.StorageSection, BusConfig, MeterConfig, PointConfig,
                   schema.MqttDestination, schema.ProvinceHttpsDestination, schema.ProvinceItem,
                   schema.BoundarySection, schema.CodeCoefficient):
        for f in msgspec.structs.fields(struct):
            if f.encode_name not in present | not_keys and f.encode_name not in {"point", "codes", "item"}:
                missing.append(f"{struct.__name__}.{f.encode_name}")
    assert missing == []
    assert {"meter.point", "meter.codes", "coefficients", "storage", "schedule", "boundary",
            "destination", "destination.item"} <= sections
