"""Standard-coal conversion (GB/T 2589): kgce per unit of each energy variety.

The defaults are GB/T 2589-2020's reference values (1 kgce = 29,307.6 kJ), tabulated with
sources in docs/accounting.md. Provinces publish their own coefficient per energy code and a
measured calorific value beats any table, so `Config.coefficients` (variety → kgce per unit) and
`Config.coefficient` (data code → kgce, steam enthalpy or pressure, gas calorific value)
override them site by site. Everything here is Decimal so a report's
tonnes of standard coal equivalent (tce) are reproducible to the last digit from the figures in
the envelope.

Electricity has two conventions: the equivalent value (当量值, 0.1229 kgce/kWh, the calorific
content of electricity itself) and the equal value (等价值, ≈0.30, the coal burnt to generate
it, published yearly). The default is the equivalent value; a site that configures another
electricity coefficient reports under the equal-value convention, and every report says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from agent.accounting.steam import saturated_steam_enthalpy

KJ_PER_KGCE = Decimal("29307.6")
STEAM_KGCE_PER_MJ = Decimal("0.03412")  # = 1 / 29.3076 MJ per kgce, rounded as GB/T 2589 does
ELECTRICITY_EQUIVALENT = Decimal("0.1229")
TCE_PLACES = Decimal("0.0001")  # tonnes of standard coal to 0.1 kgce

# variety -> (kgce per base unit, base unit). [P]: the value a provincial platform's open-source
# client uses (github.com/OceanWht/yn-nhjc); [K]: a commonly quoted value not checked against the
# standard's text — confirm against the province's table; sites override via Config.coefficients.
DEFAULTS: dict[str, tuple[Decimal, str]] = {
    "electricity": (ELECTRICITY_EQUIVALENT, "kWh"),  # equivalent value [P]
    "heat": (Decimal("0.03412"), "MJ"),  # 34.12 kgce per GJ [P]
    "raw_coal": (Decimal("0.7143"), "kg"),
    "cleaned_coal": (Decimal("0.9000"), "kg"),
    "coke": (Decimal("0.9714"), "kg"),
    "crude_oil": (Decimal("1.4286"), "kg"),
    "fuel_oil": (Decimal("1.4286"), "kg"),
    "gasoline": (Decimal("1.4714"), "kg"),
    "kerosene": (Decimal("1.4714"), "kg"),
    "diesel": (Decimal("1.4571"), "kg"),
    "lpg": (Decimal("1.7143"), "kg"),
    "natural_gas": (Decimal("1.2143"), "m3"),  # range 1.1000–1.3300: override with the measured
    "coke_oven_gas": (Decimal("0.5714"), "m3"),  # range 0.5714–0.6143 [P]/[K]: lower bound
    "blast_furnace_gas": (Decimal("0.1286"), "m3"),  # [K]
    # Low-pressure saturated steam, 3.763 MJ/kg × 0.03412 [K]. Steam really is enthalpy-based:
    # configure coefficients.steam = steam_coefficient(enthalpy) for the site's conditions.
    "steam": (Decimal("0.1284"), "kg"),
    "fresh_water": (Decimal("0.0857"), "t"),  # [K]
    "compressed_air": (Decimal("0.0400"), "m3"),  # [K]
    "oxygen": (Decimal("0.4000"), "m3"),  # [K]
}

# unit as configured -> (base unit, factor): a reading in `unit` × factor is in the base unit.
UNITS: dict[str, tuple[str, Decimal]] = {
    "kWh": ("kWh", Decimal(1)), "kW·h": ("kWh", Decimal(1)), "MWh": ("kWh", Decimal(1000)),
    "Wh": ("kWh", Decimal("0.001")),
    "kg": ("kg", Decimal(1)), "t": ("kg", Decimal(1000)),
    "m3": ("m3", Decimal(1)), "m³": ("m3", Decimal(1)), "Nm3": ("m3", Decimal(1)),
    "Nm³": ("m3", Decimal(1)),
    "MJ": ("MJ", Decimal(1)), "GJ": ("MJ", Decimal(1000)), "kJ": ("MJ", Decimal("0.001")),
}


class CoalError(ValueError):
    """A variety or unit the conversion table cannot handle; the message says what to set."""


@dataclass(frozen=True, slots=True)
class Coefficients:
    """The coefficients one report uses: defaults with the site's overrides applied."""

    kgce: Mapping[str, Decimal]  # variety -> kgce per base unit
    base_units: Mapping[str, str]  # variety -> base unit of its coefficient
    per_code: Mapping[str, Decimal] = field(default_factory=dict)  # data code -> kgce per its unit

    @property
    def electricity_convention(self) -> str:
        """"equivalent" (当量值) for the default 0.1229 kgce/kWh, else "equal" (等价值)."""
        e = self.kgce.get("electricity", ELECTRICITY_EQUIVALENT)
        return "equivalent" if e == ELECTRICITY_EQUIVALENT else "equal"

    def factor(self, variety: str, unit: str, code: str | None = None) -> Decimal:
        """kgce per `unit` of `variety` (the coefficient adjusted for the unit's scale). A
        coefficient configured for the data code comes first; it is per the variety's base
        unit (kg of steam, m³ of gas), or per the item's own unit for a variety of the site's
        own naming."""
        per = self.per_code.get(code) if code is not None else None
        if per is None and variety not in self.kgce:
            raise CoalError(
                f"energy variety {variety!r} has no standard-coal coefficient: add "
                f"coefficients.{variety} = <kgce per unit> to the config"
            )
        k = per if per is not None else self.kgce[variety]
        base = self.base_units.get(variety)
        if base is None or unit == base:
            return k  # a site coefficient is taken as per the point's own unit
        conv = UNITS.get(unit)
        if conv is None or conv[0] != base:
            raise CoalError(
                f"energy variety {variety!r} is measured in {unit!r}, but its coefficient is per "
                f"{base}: use a unit convertible to {base} or set coefficients.{variety} per {unit}"
            )
        return k * conv[1]

    def tce(self, variety: str, unit: str, quantity: Decimal, code: str | None = None) -> Decimal:
        """Tonnes of standard coal for `quantity` in `unit`, rounded to 0.1 kgce. A coefficient
        configured for the data code (measured calorific value, steam enthalpy) comes first and
        is per the item's own unit."""
        kgce = quantity * self.factor(variety, unit, code)
        return (kgce / 1000).quantize(TCE_PLACES, rounding=ROUND_HALF_UP)


def coefficients(overrides: Mapping[str, float] | None = None,
                 per_code: Mapping[str, Any] | None = None) -> Coefficients:
    """Defaults with the site's `Config.coefficients` applied.

    An override is taken per the variety's base unit when the variety is in the table (so
    "natural_gas = 1.1" means kgce per m³), and per the point's own unit for a variety of the
    site's own naming.
    """
    kgce = {v: c for v, (c, _) in DEFAULTS.items()}
    base = {v: u for v, (_, u) in DEFAULTS.items()}
    for variety, value in (overrides or {}).items():
        kgce[variety] = Decimal(repr(value))
    codes = {code: code_coefficient(c) for code, c in (per_code or {}).items()}
    return Coefficients(kgce, base, codes)


def code_coefficient(c: Any) -> Decimal:
    """kgce per unit from one `[coefficient."<code>"]` table (agent/config/schema.py)."""
    if c.kgce is not None:
        return Decimal(repr(c.kgce))
    if c.enthalpy_mj_per_kg is not None:
        return steam_coefficient(repr(c.enthalpy_mj_per_kg))
    if c.pressure_mpa is not None:
        return steam_coefficient(saturated_steam_enthalpy(Decimal(repr(c.pressure_mpa))))
    if c.calorific_mj_per_m3 is not None:
        return gas_coefficient(Decimal(repr(c.calorific_mj_per_m3)))
    raise CoalError("coefficient: give kgce, enthalpy_mj_per_kg, pressure_mpa or calorific_mj_per_m3")


def gas_coefficient(net_calorific_mj_per_m3: Decimal) -> Decimal:
    """kgce per m³ of a gas from its net calorific value (1 kgce = 29.3076 MJ, GB/T 2589)."""
    return (net_calorific_mj_per_m3 * 1000 / KJ_PER_KGCE).quantize(Decimal("0.0001"), ROUND_HALF_UP)


def steam_coefficient(enthalpy_mj_per_kg: Decimal | float | str) -> Decimal:
    """kgce per kg of steam from its enthalpy in MJ/kg (GB/T 2589: enthalpy × 0.03412)."""
    return (Decimal(str(enthalpy_mj_per_kg)) * STEAM_KGCE_PER_MJ).quantize(Decimal("0.0001"))


def format_decimal(value: Decimal) -> str:
    """A Decimal as a plain decimal string (never exponent notation), for the wire."""
    return f"{value:f}"
