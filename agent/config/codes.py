"""The shipped dictionaries of data-code fields: energy varieties (TTTT) and usages (DD).

A data code is PP-UU-EEEE-CCTTTT-DD. Which variety a TTTT names and which boundary role a DD
gives are data, not code: config/codes/varieties.toml and usages.toml (shipped in the wheel in
agent/config/dictionaries), each entry with its Chinese name and whether a public source confirmed it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

Role = Literal["input", "output", "sub", "none"]
ROLES: tuple[str, ...] = ("input", "output", "sub", "none")


@dataclass(frozen=True, slots=True)
class Variety:
    code: str  # TTTT
    key: str  # the agent's variety name (coal.DEFAULTS)
    class_: str  # CC it belongs to
    name: str
    name_en: str
    confirmed: bool


@dataclass(frozen=True, slots=True)
class Usage:
    code: str  # DD
    role: Role
    name: str
    name_en: str
    confirmed: bool


@dataclass(frozen=True, slots=True)
class CodeFields:
    process: str
    unit: str
    equipment: str
    class_: str  # CC
    variety: str  # TTTT
    usage: str  # DD


def split_code(code: str) -> CodeFields:
    """The fields of a well-formed data code (checked by DATA_CODE before this is called)."""
    pp, uu, eeee, cctttt, dd = code.split("-")
    return CodeFields(pp, uu, eeee, cctttt[:2], cctttt[2:], dd)


def codes_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here / "dictionaries", here.parents[1] / "config" / "codes"]


def _read(name: str) -> dict:
    for d in codes_dirs():
        f = d / name
        if f.is_file():
            with f.open("rb") as fh:
                return tomllib.load(fh)
    raise FileNotFoundError(f"shipped dictionary {name} not found in {codes_dirs()}")


@cache
def varieties() -> dict[str, Variety]:
    raw = _read("varieties.toml").get("variety", {})
    return {c: Variety(c, v["key"], v["class"], v.get("name", ""), v.get("name_en", ""),
                       bool(v.get("confirmed", False))) for c, v in raw.items()}


@cache
def usages() -> dict[str, Usage]:
    raw = _read("usages.toml").get("usage", {})
    out = {}
    for c, v in raw.items():
        role = v["role"]
        if role not in ROLES:
            raise ValueError(f"usages.toml: usage {c}: role {role!r} is not one of {ROLES}")
        out[c] = Usage(c, role, v.get("name", ""), v.get("name_en", ""),
                       bool(v.get("confirmed", False)))
    return out


def default_role(code: str) -> Role:
    """The boundary role the usage field gives: unknown usages are sub-meters (never summed)."""
    u = usages().get(split_code(code).usage)
    return u.role if u is not None else "sub"


def variety_of(code: str) -> str | None:
    """The agent's variety name for the code's TTTT field, if the dictionary knows it."""
    v = varieties().get(split_code(code).variety)
    return v.key if v is not None else None
