"""Meter profiles: one TOML file per meter model, shipped with the package.

A profile maps a model's registers to named points (see docs/profiles.md). The installed
wheel carries them as drivers/profiles; a source checkout keeps them in config/profiles.
"""

from __future__ import annotations

import re
from pathlib import Path

from drivers.model import Profile
from drivers.validation import decode_toml

SHIPPED_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def profile_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here / "profiles", here.parent / "config" / "profiles"]


def load_profile(name: str) -> Profile:
    """The shipped profile `name`. KeyError if there is none; ConfigError if it is broken."""
    if not SHIPPED_NAME.fullmatch(name):  # never a path: no '/', no '..', bounded length
        raise KeyError(name)
    for d in profile_dirs():
        f = d / f"{name}.toml"
        if f.is_file():
            return decode_toml(f, Profile)
    raise KeyError(name)


def profile_names() -> list[str]:
    names: set[str] = set()
    for d in profile_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml") if SHIPPED_NAME.fullmatch(p.stem))
    return sorted(names)
