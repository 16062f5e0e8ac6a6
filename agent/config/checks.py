"""What the schema alone cannot say: cross-references, duplicates, profiles, data codes.

Each problem is one line naming the key path; `check` also resolves every meter's points
(profile plus inline overrides) and its request limits, so nothing downstream reads profiles.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from agent.accounting import coal
from agent.config.boundary import check_boundary
from agent.config.credit_code import credit_code_problem
from agent.config.destinations import resolve_destinations
from agent.config.schema import DATA_CODE, Config
from agent.config.transport import is_loopback
from drivers.di_layout import resolve_point
from drivers.model import BUS_PROTOCOL, SERIAL_KINDS, MeterConfig, PointConfig, Profile, ProfileInfo
from drivers.profiles import load_profile, profile_names
from drivers.validation import ConfigError, decode_toml


def check(cfg: Config, path: Path, errors: list[str]) -> None:
    def err(key: str, msg: str) -> None:
        errors.append(f"{path}: {key}: {msg}")

    if problem := credit_code_problem(cfg.agent.enterprise):
        cfg.warnings.append(
            f"{path}: agent.enterprise: {problem} — accepted (some pilot codes fail the check); "
            "make sure it matches the code registered with the platform"
        )
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", cfg.agent.enterprise):
        err("agent.enterprise", f"expected letters and digits only, got {cfg.agent.enterprise!r}")
    try:
        ZoneInfo(cfg.agent.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "Asia"
        err("agent.timezone", f"expected an IANA time zone like Asia/Shanghai, got {cfg.agent.timezone!r}")
    if not cfg.agent.data_dir.startswith("/"):
        err("agent.data_dir", f"expected an absolute path, got {cfg.agent.data_dir!r}")

    resolve_destinations(cfg, err)
    if cfg.platform is not None and cfg.platform.allow_plaintext is not None and cfg.platform.tls:
        cfg.warnings.append(f"{path}: platform.allow_plaintext: ignored, tls = true")

    check_web(cfg, err)

    buses: dict[str, int] = {}
    for i, b in enumerate(cfg.bus):
        if b.name in buses:
            err(f"bus[{i}].name", f"duplicate bus name {b.name!r} (also bus[{buses[b.name]}])")
        buses[b.name] = i
        if b.kind in ("modbus-tcp", "modbus-rtu-over-tcp"):
            if not b.host:
                err(f"bus[{i}].host", f"required for kind {b.kind}")
            if b.device:
                err(f"bus[{i}].device", f"not used by kind {b.kind}; did you mean kind = \"modbus-rtu\"?")
            if b.port is None:
                b.port = 502
        elif b.kind in SERIAL_KINDS:
            if not b.device:
                err(f"bus[{i}].device", f"required for kind {b.kind} (e.g. /dev/ttyS1)")
            if b.host or b.port:
                err(f"bus[{i}].host", f"not used by kind {b.kind}")

    meters: dict[str, int] = {}
    units: dict[tuple[str, int | str], int] = {}
    kinds = {b.name: b.kind for b in cfg.bus}
    # The daemon keeps its config for life: each profile is read once, and meters of one model
    # share equal (frozen) PointConfig objects instead of each holding copies.
    profiles: dict[str, Profile] = {}
    shared: dict[PointConfig, PointConfig] = {}
    for i, m in enumerate(cfg.meter):
        key = f"meter[{i}]"
        if m.name in meters:
            err(f"{key}.name", f"duplicate meter name {m.name!r} (also meter[{meters[m.name]}])")
        meters[m.name] = i
        if m.bus not in buses:
            known = ", ".join(buses) or "none configured"
            err(f"{key}.bus", f"unknown bus {m.bus!r} (buses: {known})")
        protocol = BUS_PROTOCOL.get(kinds.get(m.bus, ""), "modbus")
        if protocol == "modbus":
            if m.bus in buses and (m.bus, m.unit) in units:
                err(f"{key}.unit", f"unit {m.unit} on bus {m.bus!r} is already meter[{units[m.bus, m.unit]}]")
            elif m.bus in buses:
                units[m.bus, m.unit] = i
            if m.unit == 0:
                err(f"{key}.unit", "expected 1–247 (0 is broadcast and never answers)")
            if m.address is not None and m.bus in kinds:  # an unknown bus is reported above
                err(f"{key}.address", f"not used on a Modbus bus; give unit (bus {m.bus!r} is {kinds[m.bus]})")
        else:
            _check_address(m, key, protocol, err)
            if m.address is not None and (m.bus, m.address) in units:
                err(f"{key}.address", f"address {m.address} on bus {m.bus!r} is already "
                    f"meter[{units[m.bus, m.address]}]")
            elif m.address is not None:
                units[m.bus, m.address] = i
        _resolve_points(m, key, err, profiles, shared, path.parent, protocol)
    if not errors:
        check_boundary(cfg, err, lambda v: v in coal.DEFAULTS or v in cfg.coefficients)


def _check_address(m: MeterConfig, key: str, protocol: str, err: Any) -> None:
    digits = 12 if protocol == "dlt645" else 14
    if m.address is None:
        err(f"{key}.address", f"required on a {protocol} bus: the meter number on its nameplate "
            f"(up to {digits} digits)")
    elif len(m.address) > digits:
        err(f"{key}.address", f"expected up to {digits} digits for {protocol}, got {m.address!r}")



def _profile(name: str, config_dir: Path) -> Profile:
    """A shipped profile by name, or a profile file given as a path under the config's own
    directory (relative to it, or absolute inside it). KeyError: no such profile; ConfigError:
    a path outside the directory, or a broken file."""
    if "/" not in name and not name.endswith(".toml"):
        return load_profile(name)
    base = config_dir.resolve()
    try:
        target = (base / name).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ConfigError([f"cannot resolve: {e}"]) from None
    if not target.is_relative_to(base) or target.suffix != ".toml":
        raise ConfigError([f"expected a shipped profile name or a .toml file under {base}"])
    if not target.is_file():
        raise ConfigError([f"{target}: file not found"])
    return decode_toml(target, Profile)


def _resolve_points(
    m: MeterConfig, key: str, err: Any, profiles: dict[str, Profile], shared: dict[PointConfig, PointConfig],
    config_dir: Path,
    protocol: str = "modbus",
) -> None:
    points: list[PointConfig] = []
    info: ProfileInfo | None = None
    if m.profile:
        try:
            prof = profiles.get(m.profile)
            if prof is None:
                prof = profiles[m.profile] = _profile(m.profile, config_dir)
        except KeyError:
            err(f"{key}.profile", f"unknown profile {m.profile[:80]!r} (known: {', '.join(profile_names())}; "
                "or a path to a .toml file under the config's directory)")
            return
        except ConfigError as e:
            err(f"{key}.profile", f"profile {m.profile[:80]!r}: {e.lines[0]}")
            return
        info = prof.profile
        if info.protocol != protocol:
            err(f"{key}.profile", f"profile {m.profile!r} speaks {info.protocol}, but bus {m.bus!r} "
                f"carries {protocol} (a line carries one protocol)")
            return
        points.extend(prof.point)
    names = {p.name for p in points}
    m.point = [shared.setdefault(p, p) for p in m.point]
    for j, p in enumerate(m.point):
        if p.name in names:
            # An inline point with a profile point's name replaces it (site-specific override).
            points = [q for q in points if q.name != p.name]
        names.add(p.name)
        points.append(p)
        _check_point(p, f"{key}.point[{j}]", err, protocol)
    if not points:
        err(key, "no points: give a profile or at least one [[meter.point]]")
    for pname, code in m.codes.items():
        if pname not in names:
            err(f"{key}.codes.{pname}", f"no point named {pname!r} on this meter")
        elif not DATA_CODE.match(code):
            err(f"{key}.codes.{pname}", f"expected a data code PP-UU-EEEE-CCTTTT-DD, got {code!r}")
    if protocol != "modbus" and m.frame is None and info is not None:
        m.frame = info.frame
    if protocol == "cjt188" and (m.frame is None or m.frame.meter_type is None):
        err(f"{key}.frame.meter_type", "required for CJ/T 188 (10 cold water, 20 heat, 30 gas …): "
            "set it in the profile's [profile.frame] or the meter's frame")
        return
    resolved = []
    for p in points:
        if p.name in m.codes:
            p = msgspec.structs.replace(p, code=m.codes[p.name])
        if protocol != "modbus":
            r = resolve_point(p, protocol, m.frame)
            if isinstance(r, str):
                err(f"{key}.point.{p.name}", r)
                continue
            p = r
        resolved.append(shared.setdefault(p, p))
    m.points = resolved
    _check_freezes(m, key, err)
    if m.max_registers is None:
        m.max_registers = info.max_registers if info else 125
    for p in resolved:
        if p.count > m.max_registers:
            err(f"{key}.max_registers", f"point {p.name!r} is a {p.type} of {p.count} registers, more "
                f"than one request may read ({m.max_registers}); raise max_registers")
    if m.max_gap is None:
        m.max_gap = info.max_gap if info else 10
    if m.pause_ms is None:
        m.pause_ms = info.pause_ms if info else 0
    if m.connect_pause_ms is None:
        m.connect_pause_ms = info.connect_pause_ms if info else 0
    if m.probe_point is None:
        m.probe_point = info.probe_point if info else (points[0].name if points else None)
    elif m.probe_point not in names:
        err(f"{key}.probe_point", f"no point named {m.probe_point!r} on this meter")


def _check_freezes(m: MeterConfig, key: str, err: Any) -> None:
    """A freeze point names a counter of the same meter (the daily close reads it for that one)."""
    kinds = {p.name: p.kind for p in m.points}
    for p in m.points:
        if p.freeze_of is None:
            continue
        if p.freeze_of not in kinds:
            err(f"{key}.point.{p.name}.freeze_of", f"no point named {p.freeze_of!r} on this meter")
        elif kinds[p.freeze_of] != "counter":
            err(f"{key}.point.{p.name}.freeze_of", f"{p.freeze_of!r} is not a counter")


def _check_point(p: PointConfig, key: str, err: Any, protocol: str = "modbus") -> None:
    if p.code is not None and not DATA_CODE.match(p.code):
        err(f"{key}.code", f"expected a data code PP-UU-EEEE-CCTTTT-DD, got {p.code!r}")
    if protocol != "modbus":
        return  # resolved and checked with the meter's framing (drivers.di_layout)
    if p.register is None:
        err(f"{key}.register", "required on a Modbus bus (di is for DL/T 645 / CJ/T 188 buses)")
        return
    if p.di is not None:
        err(f"{key}.di", "not used on a Modbus bus; give register")
    if p.register + p.count > 65536:
        err(f"{key}.register", f"a {p.type} at {p.register} runs past register 65535")
    if abs(p.scale) < 1e-12:
        err(f"{key}.scale", "expected a non-zero number (at least 1e-12 in magnitude)")
    if p.modulus is not None and p.kind != "counter":
        err(f"{key}.modulus", "only counters roll over; set kind = \"counter\" or remove modulus")



def check_web(cfg: Config, err: Any) -> None:
    """The web page leaves loopback only behind TLS and a login: readings, the signing action
    (manual entry) and the outbox must not be one unauthenticated LAN request away."""
    w = cfg.web
    if (w.tls_cert is None) != (w.tls_key is None):
        err("web.tls_cert", "tls_cert and tls_key go together")
    if not is_loopback(w.listen):
        missing = [k for k in ("tls_cert", "tls_key", "password_file") if getattr(w, k) is None]
        if missing:
            err("web.listen", f"{w.listen!r} is not loopback: set web.{', web.'.join(missing)} "
                "(TLS and a login) or listen on 127.0.0.1")
