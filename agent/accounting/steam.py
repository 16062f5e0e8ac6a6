"""Specific enthalpy of saturated steam by pressure, for steam's standard-coal coefficient.

GB/T 2589 converts steam by its enthalpy (kgce/kg = MJ/kg × 0.03412). Sites usually know the
steam's pressure, not its enthalpy: this table gives h'' of dry saturated steam at absolute
pressure, from the IAPWS-IF97 formulation (values as tabulated in the IAPWS-IF97 steam tables,
Wagner & Kruse, "Properties of Water and Steam", Springer 1998; the NIST Chemistry WebBook
gives the same to 0.1 kJ/kg). Between rows it interpolates linearly: h'' is flat and smooth in
this range, so the error is under 1 kJ/kg (0.04 %). Superheated steam: configure its enthalpy
(`enthalpy_mj_per_kg`) from the supplier's figure or a steam table at its pressure and temperature.
"""

from __future__ import annotations

import itertools
from decimal import ROUND_HALF_UP, Decimal

# absolute pressure MPa -> h'' kJ/kg
SATURATED: tuple[tuple[Decimal, Decimal], ...] = tuple((Decimal(p), Decimal(h)) for p, h in (
    ("0.1", "2674.9"), ("0.2", "2706.2"), ("0.3", "2724.9"), ("0.4", "2738.1"),
    ("0.5", "2748.1"), ("0.6", "2756.1"), ("0.7", "2762.8"), ("0.8", "2768.3"),
    ("1.0", "2777.1"), ("1.2", "2783.8"), ("1.4", "2788.9"), ("1.6", "2792.9"),
    ("2.0", "2798.3"), ("2.5", "2801.9"), ("3.0", "2803.2"), ("4.0", "2800.8"),
))


class SteamError(ValueError):
    pass


def saturated_steam_enthalpy(pressure_mpa: Decimal) -> Decimal:
    """h'' in MJ/kg at `pressure_mpa` (absolute), 0.1–4.0 MPa, to 0.0001 MJ/kg."""
    lo, hi = SATURATED[0][0], SATURATED[-1][0]
    if not lo <= pressure_mpa <= hi:
        raise SteamError(f"saturated steam table covers {lo}–{hi} MPa (absolute), got "
                         f"{pressure_mpa}: configure enthalpy_mj_per_kg instead")
    for (p0, h0), (p1, h1) in itertools.pairwise(SATURATED):
        if p0 <= pressure_mpa <= p1:
            h = h0 + (h1 - h0) * (pressure_mpa - p0) / (p1 - p0)
            return (h / 1000).quantize(Decimal("0.0001"), ROUND_HALF_UP)
    raise AssertionError("unreachable")
