"""Every shipped meter profile loads, is self-consistent, and speaks the canonical vocabulary.

The vocabulary (names and their units) is documented in docs/profiles.md; keep the two in step.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from drivers.model import REGISTERS
from drivers.profiles import load_profile

PROFILE_DIR = Path(__file__).resolve().parent.parent / "config" / "profiles"
PROFILES = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))

# Canonical point name -> allowed units (a tuple where the vocabulary allows a choice).
CANONICAL_UNITS: dict[str, tuple[str, ...]] = {
    "import_active_energy": ("kWh",),
    "export_active_energy": ("kWh",),
    "import_reactive_energy": ("kvarh",),
    "export_reactive_energy": ("kvarh",),
    "voltage_a": ("V",),
    "voltage_b": ("V",),
    "voltage_c": ("V",),
    "current_a": ("A",),
    "current_b": ("A",),
    "current_c": ("A",),
    "active_power": ("kW",),
    "reactive_power": ("kvar",),
    "power_factor": ("1",),
    "frequency": ("Hz",),
    "volume": ("m3",),
    "standard_volume": ("Nm3",),
    "mass": ("t",),
    "heat_energy": ("GJ", "kWh"),
    "flow_rate": ("m3/h",),
    "standard_flow_rate": ("Nm3/h",),
    "mass_flow": ("t/h",),
    "temperature": ("°C",),
    "temperature_supply": ("°C",),
    "temperature_return": ("°C",),
    "pressure": ("MPa",),
    # DL/T 645 / CJ/T 188 meters: tariff splits, the meter's own daily freeze, settlement days.
    **{f"{d}_active_energy_t{t}": ("kWh",) for d in ("import", "export") for t in range(1, 5)},
    "import_active_energy_freeze": ("kWh",),
    "freeze_time": ("",),
    "heat_energy_settlement": ("GJ", "kWh"),
    "volume_settlement": ("m3",),
    "heat_power": ("kW",),
    "operating_hours": ("h",),
}
# Tariff splits divide a total: counters, but without a variety, so no sum counts them twice.
TARIFFS = {f"{d}_active_energy_t{t}" for d in ("import", "export") for t in range(1, 5)}
COUNTERS = {
    "import_active_energy",
    "export_active_energy",
    "import_reactive_energy",
    "export_reactive_energy",
    "volume",
    "standard_volume",
    "mass",
    "heat_energy",
    *TARIFFS,
}
KINDS = {"electricity", "gas", "steam", "heat", "water"}


def test_profiles_are_shipped():
    assert len(PROFILES) >= 4
    kinds = {load_profile(n).profile.kind for n in PROFILES}
    assert kinds - {"electricity"}, "at least one non-electric profile"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_and_is_named_after_its_file(name):
    prof = load_profile(name)
    assert prof.profile.name == name
    assert prof.profile.kind in KINDS
    assert prof.profile.source.strip(), "every profile names where its register map came from"
    assert prof.point, "a profile without points is useless"


@pytest.mark.parametrize("name", PROFILES)
def test_probe_point_exists(name):
    prof = load_profile(name)
    assert prof.profile.probe_point in {p.name for p in prof.point}


@pytest.mark.parametrize("name", PROFILES)
def test_point_names_unique_and_canonical(name):
    names = [p.name for p in load_profile(name).point]
    assert len(names) == len(set(names)), f"duplicate point names in {name}"
    unknown = set(names) - CANONICAL_UNITS.keys()
    assert not unknown, f"{name}: not in the canonical vocabulary: {sorted(unknown)}"


@pytest.mark.parametrize("name", PROFILES)
def test_units_match_vocabulary(name):
    for p in load_profile(name).point:
        assert p.unit in CANONICAL_UNITS[p.name], (
            f"{name}.{p.name}: unit {p.unit!r}, expected {' or '.join(CANONICAL_UNITS[p.name])}"
        )


@pytest.mark.parametrize("name", PROFILES)
def test_counters_have_variety_and_kind(name):
    for p in load_profile(name).point:
        if p.kind == "counter" and p.name not in TARIFFS:
            assert p.variety, f"{name}.{p.name}: a counter needs an energy variety"
        if p.name in TARIFFS:
            assert p.variety is None, f"{name}.{p.name}: a tariff split must not carry a variety"
        assert (p.kind == "counter") == (p.name in COUNTERS), (
            f"{name}.{p.name}: kind {p.kind!r} disagrees with the vocabulary"
        )


@pytest.mark.parametrize("name", PROFILES)
def test_registers_do_not_overlap(name):
    prof = load_profile(name)
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for p in prof.point:
        if p.register is None:
            assert prof.profile.protocol != "modbus" and p.di, f"{name}.{p.name}: no register"
            continue
        end = p.register + REGISTERS[p.type]
        assert end <= 65536, f"{name}.{p.name} runs past register 65535"
        spans.setdefault(p.function, []).append((p.register, end, p.name))
    for function, items in spans.items():
        items.sort()
        for (a0, a1, an), (b0, _b1, bn) in itertools.pairwise(items):
            assert a1 <= b0, f"{name}: {an} [{a0:#06x},{a1:#06x}) overlaps {bn} at {b0:#06x} ({function})"


@pytest.mark.parametrize("name", PROFILES)
def test_single_point_fits_one_read(name):
    prof = load_profile(name)
    for p in prof.point:
        assert REGISTERS[p.type] <= prof.profile.max_registers, f"{name}.{p.name}"


@pytest.mark.parametrize("name", [n for n in PROFILES if load_profile(n).profile.protocol != "modbus"])
def test_di_profiles_resolve_and_name_their_clause(name):
    from drivers.di_layout import resolve_point

    prof = load_profile(name)
    text = (PROFILE_DIR / f"{name}.toml").read_text(encoding="utf-8")
    for p in prof.point:
        assert not isinstance(resolve_point(p, prof.profile.protocol, prof.profile.frame), str), p.name
        # Every DI names its source (standard clause or datasheet) in its line's comment.
        line = next(x for x in text.splitlines() if x.startswith(f'name = "{p.name}"'))
        assert "—" in line and ("表" in line or "CJ/T 188" in line), line
    freezes = [p for p in prof.point if p.freeze_of]
    if prof.profile.protocol == "dlt645":
        assert [p.freeze_of for p in freezes] == ["import_active_energy"]
