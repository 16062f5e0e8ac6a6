"""The DL/T 645-2007 data identifiers a site needs, with their data formats.

From DL/T 645-2007 附录 A: 表 A.1 (电能量, energy), 表 A.3 (变量, instantaneous values) and
表 A.6 (冻结, frozen data). A point whose `di` is listed here may leave out `format` and
`signed`; any other DI (a private one, or one not listed) must state them. Values carry the
sign in bit 7 of the most significant byte where `signed` is true (the standard marks these
"最高位表示方向": combined energies, currents, powers, power factor).
"""

from __future__ import annotations

from typing import NamedTuple


class DiFormat(NamedTuple):
    format: str  # digit pattern, e.g. XXXXXX.XX
    signed: bool
    unit: str
    what: str  # the standard's name, for docs and `probe`
    clause: str


_ENERGY = "DL/T 645-2007 表 A.1"
_VARIABLE = "DL/T 645-2007 表 A.3"
_FREEZE = "DL/T 645-2007 表 A.6"


def _energy(name: str, signed: bool = False, unit: str = "kWh") -> DiFormat:
    return DiFormat("XXXXXX.XX", signed, unit, name, _ENERGY)


KNOWN_DIS: dict[str, DiFormat] = {
    "00000000": _energy("combined active energy, total (组合有功总电能)", signed=True),
    "00010000": _energy("forward active energy, total (正向有功总电能)"),
    **{f"0001{t:02d}00": _energy(f"forward active energy, tariff {t} (正向有功费率{t}电能)")
       for t in range(1, 5)},
    "00020000": _energy("reverse active energy, total (反向有功总电能)"),
    **{f"0002{t:02d}00": _energy(f"reverse active energy, tariff {t} (反向有功费率{t}电能)")
       for t in range(1, 5)},
    "00030000": _energy("combined reactive 1 energy, total (组合无功1总电能)", True, "kvarh"),
    "00040000": _energy("combined reactive 2 energy, total (组合无功2总电能)", True, "kvarh"),
    **{f"0201{p:02d}00": DiFormat("XXX.X", False, "V", f"phase {c} voltage ({c}相电压)", _VARIABLE)
       for p, c in ((1, "A"), (2, "B"), (3, "C"))},
    **{f"0202{p:02d}00": DiFormat("XXX.XXX", True, "A", f"phase {c} current ({c}相电流)", _VARIABLE)
       for p, c in ((1, "A"), (2, "B"), (3, "C"))},
    "02030000": DiFormat("XX.XXXX", True, "kW", "active power, total (总有功功率)", _VARIABLE),
    **{f"0203{p:02d}00": DiFormat("XX.XXXX", True, "kW", f"phase {c} active power ({c}相有功功率)",
                                  _VARIABLE) for p, c in ((1, "A"), (2, "B"), (3, "C"))},
    "02040000": DiFormat("XX.XXXX", True, "kvar", "reactive power, total (总无功功率)", _VARIABLE),
    "02050000": DiFormat("XX.XXXX", True, "kVA", "apparent power, total (总视在功率)", _VARIABLE),
    "02060000": DiFormat("X.XXX", True, "1", "power factor, total (总功率因数)", _VARIABLE),
    **{f"0206{p:02d}00": DiFormat("X.XXX", True, "1", f"phase {c} power factor ({c}相功率因数)",
                                  _VARIABLE) for p, c in ((1, "A"), (2, "B"), (3, "C"))},
    "02800002": DiFormat("XX.XX", False, "Hz", "grid frequency (电网频率)", _VARIABLE),
    # Blocks (DI0 or DI1 = FF): one request answers every element in a row, each in the
    # element's format; a point picks its element with `at` (bytes from the start: phase B
    # voltage is at = 2). Not every meter answers blocks: check with `probe`.
    "0201FF00": DiFormat("XXX.X", False, "V", "phase voltages A, B, C (电压数据块)", _VARIABLE),
    "0202FF00": DiFormat("XXX.XXX", True, "A", "phase currents A, B, C (电流数据块)", _VARIABLE),
    "0203FF00": DiFormat("XX.XXXX", True, "kW", "active power total, A, B, C (有功功率数据块)", _VARIABLE),
    "0204FF00": DiFormat("XX.XXXX", True, "kvar", "reactive power total, A, B, C (无功功率数据块)", _VARIABLE),
    "0206FF00": DiFormat("X.XXX", True, "1", "power factor total, A, B, C (功率因数数据块)", _VARIABLE),
    "0001FF00": _energy("forward active energy total, tariffs 1… (正向有功电能数据块)"),
    "0002FF00": _energy("reverse active energy total, tariffs 1… (反向有功电能数据块)"),
    # The last daily freeze: when it happened (YYMMDDhhmm, the meter's local time) and the
    # forward active energy then. The energy block holds the total and then each tariff;
    # the total is its first 4 bytes.
    "05060001": DiFormat("YYMMDDhhmm", False, "", "last daily freeze time ((上1次)日冻结时间)", _FREEZE),
    "05060101": _energy("forward active energy at the last daily freeze ((上1次)日冻结正向有功电能数据)")
    ._replace(clause=_FREEZE),
    "05060201": _energy("reverse active energy at the last daily freeze ((上1次)日冻结反向有功电能数据)")
    ._replace(clause=_FREEZE),
}
