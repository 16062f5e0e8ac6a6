"""Standard-coal conversion against hand calculations (GB/T 2589 reference values)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agent.accounting.coal import CoalError, coefficients, steam_coefficient
from agent.accounting.statistics import energy_summary

D = Decimal


def _item(code: str, variety: str, unit: str, value: str) -> dict:
    return {"dataCode": code, "variety": variety, "unit": unit, "value": value, "kind": "counter"}


def test_tce_per_variety_matches_hand_calculation():
    c = coefficients()
    # Electricity, equivalent value: 12 500 kWh × 0.1229 kgce/kWh = 1 536.25 kgce = 1.5363 tce
    # (四舍五入 to 0.1 kgce).
    assert c.tce("electricity", "kWh", D("12500")) == D("1.5363")
    # Natural gas: 3 000 m³ × 1.2143 kgce/m³ = 3 642.9 kgce = 3.6429 tce.
    assert c.tce("natural_gas", "m3", D("3000")) == D("3.6429")
    # Steam metered in tonnes: 20 t = 20 000 kg × 0.1284 kgce/kg = 2 568 kgce = 2.5680 tce.
    assert c.tce("steam", "t", D("20")) == D("2.5680")
    # Raw coal: 5 t = 5 000 kg × 0.7143 kgce/kg = 3 571.5 kgce = 3.5715 tce.
    assert c.tce("raw_coal", "t", D("5")) == D("3.5715")
    # Electricity in MWh: 2.5 MWh = 2 500 kWh × 0.1229 = 307.25 kgce = 0.3073 tce.
    assert c.tce("electricity", "MWh", D("2.5")) == D("0.3073")


def test_comprehensive_consumption_is_the_sum_over_varieties():
    items = [
        _item("00-00-0000-020201-10", "electricity", "kWh", "12500"),
        # A sub-meter (usage 30): converted and shown, never summed into the total.
        _item("01-02-0301-020201-30", "electricity", "kWh", "4000"),
        _item("00-00-0000-010103-10", "natural_gas", "m3", "3000"),
        _item("00-00-0000-020501-10", "steam", "t", "20"),
        _item("00-00-0000-010104-10", "raw_coal", "t", "5"),
        # Product output (class 04) never counts as energy.
        _item("00-00-0000-040001-00", "raw_coal", "t", "100"),
    ]
    s = energy_summary(items, coefficients())
    assert s["tce"] == {"electricity": "1.5363", "natural_gas": "3.6429", "raw_coal": "3.5715",
                        "steam": "2.5680"}
    # 1.5363 + 3.6429 + 2.5680 + 3.5715 = 11.3187 tce
    assert s["total_tce"] == "11.3187"
    assert s["electricity_convention"] == "equivalent"
    assert s["electricity_coefficient"] == "0.1229"


def test_site_overrides_measured_gas_and_steam_enthalpy():
    # Measured natural gas 1.1000 kgce/m³; steam at 2.76 MJ/kg → 2.76 × 0.03412 = 0.0942 kgce/kg.
    steam = steam_coefficient("2.76")
    assert steam == D("0.0942")
    c = coefficients({"natural_gas": 1.1, "steam": float(steam)})
    assert c.tce("natural_gas", "m3", D("3000")) == D("3.3000")  # 3 300 kgce
    assert c.tce("steam", "t", D("20")) == D("1.8840")  # 20 000 × 0.0942 = 1 884 kgce


def test_equal_value_electricity_is_recorded_as_such():
    c = coefficients({"electricity": 0.3})
    assert c.electricity_convention == "equal"
    assert c.tce("electricity", "kWh", D("1000")) == D("0.3000")


def test_unknown_variety_or_unit_says_what_to_configure():
    c = coefficients()
    with pytest.raises(CoalError, match=r"coefficients\.hydrogen"):
        c.tce("hydrogen", "kg", D("1"))
    with pytest.raises(CoalError, match="per m3"):
        c.tce("natural_gas", "kg", D("1"))
    s = energy_summary([_item("00-00-0000-019999-10", "hydrogen", "kg", "5")], c)
    assert s["unconverted"] == ["00-00-0000-019999-10"] and s["total_tce"] == "0.0000"
