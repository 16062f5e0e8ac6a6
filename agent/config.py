"""The agent's configuration: one TOML file, validated on load.

Every mistake becomes one line `FILE: key.path: what was expected`, and the CLI exits 78
(EX_CONFIG). Unknown keys are errors. Meters may name a profile from config/profiles; after
`load_config` every MeterConfig has its points resolved, so nothing downstream reads profiles.
"""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta, Struct

from agent.credit_code import credit_code_problem

EX_CONFIG = 78
_T = typing.TypeVar("_T")

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
DataType = Literal["u16", "s16", "u32", "s32", "u64", "s64", "f32", "f64"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Function = Literal["holding", "input"]
PointKind = Literal["counter", "instantaneous"]
BusKind = Literal["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"]
DATA_CODE = re.compile(r"^\d{2}-\d{2}-\d{4}-\d{6}-\d{2}$")

REGISTERS: dict[str, int] = {
    "u16": 1, "s16": 1, "u32": 2, "s32": 2, "u64": 4, "s64": 4, "f32": 2, "f64": 4,
}


class Base(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AgentSection(Base, kw_only=True):
    gateway: Name
    enterprise: str  # unified social credit code, 18 characters
    timezone: str = "Asia/Shanghai"
    data_dir: str = "/var/lib/energy-agent"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class PlatformSection(Base, kw_only=True):
    host: str
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    client_id: str | None = None  # default: energy-agent-{enterprise}-{gateway}
    topic_prefix: str = "energy"
    ack: Literal["broker", "platform"] = "broker"
    ack_timeout: Annotated[float, Meta(gt=0)] = 60.0  # seconds before a platform-ack resend
    mqtt_version: Literal["3.1.1", "5"] = "3.1.1"
    keepalive: Annotated[int, Meta(ge=5, le=3600)] = 60
    inflight: Annotated[int, Meta(ge=1, le=1000)] = 20
    reconnect_min: Annotated[float, Meta(gt=0)] = 1.0
    reconnect_max: Annotated[float, Meta(gt=0)] = 60.0
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    send_raw: bool = True  # also upload every raw sample, not only interval statistics


class SigningSection(Base, kw_only=True):
    key_file: str
    key_id: str | None = None  # default: derived from the public key


class ScheduleSection(Base, kw_only=True):
    poll_interval: Annotated[float, Meta(gt=0, le=3600)] = 60.0  # seconds, aligned to the clock
    seal_interval: Annotated[float, Meta(gt=0, le=3600)] = 60.0  # how often samples are sealed
    interval_minutes: Literal[15, 30, 60] = 15
    daily_seal_at: Annotated[str, Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "00:05"
    heartbeat: Annotated[float, Meta(gt=0)] = 300.0  # seconds between status envelopes


class StorageSection(Base, kw_only=True):
    raw_keep_days: Annotated[float, Meta(gt=0)] = 31.0  # raw samples, once sealed
    # Interval, daily and monthly envelopes: the regulation asks for at least 6 months.
    history_keep_days: Annotated[float, Meta(ge=183)] = 190.0
    budget_mb: Annotated[float, Meta(gt=0)] = 1024.0  # the store's size limit on disk
    on_full: Literal["drop-oldest"] = "drop-oldest"  # what happens to unsent data when full
    retention_interval: Annotated[float, Meta(ge=1)] = 3600.0  # seconds between pruning passes


class BusConfig(Base, kw_only=True):
    name: Name
    kind: BusKind
    host: str | None = None  # modbus-tcp, modbus-rtu-over-tcp
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    device: str | None = None  # modbus-rtu: /dev/ttyS1, /dev/ttyUSB0, or a pyserial URL
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "E"
    data_bits: Literal[7, 8] = 8
    stop_bits: Literal[1, 2] = 1
    timeout: Annotated[float, Meta(gt=0, le=30)] = 1.0  # seconds per request attempt
    retries: Annotated[int, Meta(ge=0, le=10)] = 1
    offline_after: Annotated[int, Meta(ge=1)] = 3  # consecutive failed cycles
    offline_cooldown: Annotated[float, Meta(gt=0)] = 300.0  # seconds before a retry probe


class PointConfig(Base, kw_only=True):
    name: Name
    register: Annotated[int, Meta(ge=0, le=65535)]
    function: Function = "holding"
    type: DataType = "u16"
    order: ByteOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    kind: PointKind = "instantaneous"
    variety: str | None = None  # energy variety, e.g. "electricity", "natural_gas"
    code: str | None = None  # data code PP-UU-EEEE-CCTTTT-DD
    decimals: Annotated[int, Meta(ge=0, le=9)] | None = None
    modulus: float | None = None  # counter roll-over value when not implied by the type

    @property
    def count(self) -> int:
        return REGISTERS[self.type]

    @property
    def value_decimals(self) -> int:
        """Decimal places on the wire when not configured: from a power-of-ten scale, else 3."""
        if self.decimals is not None:
            return self.decimals
        if self.type.startswith("f"):
            return 3
        s = abs(self.scale)
        for d in range(10):
            if abs(s * 10**d - round(s * 10**d)) < 1e-9:
                return d
        return 6


class MeterConfig(Base, kw_only=True):
    name: Name
    bus: Name
    unit: Annotated[int, Meta(ge=0, le=255)] = 1  # Modbus unit id (0 = broadcast is refused)
    profile: str | None = None
    point: list[PointConfig] = []
    codes: dict[str, str] = {}  # point name -> data code, for points from a profile
    max_registers: Annotated[int, Meta(ge=1, le=125)] | None = None
    max_gap: Annotated[int, Meta(ge=0, le=124)] | None = None
    pause_ms: Annotated[int, Meta(ge=0, le=10000)] | None = None  # between requests
    connect_pause_ms: Annotated[int, Meta(ge=0, le=10000)] | None = None
    probe_point: str | None = None
    # Filled by load_config from the profile and the inline points; not a TOML key.
    points: list[PointConfig] = []


class Config(Base, kw_only=True):
    agent: AgentSection
    platform: PlatformSection
    signing: SigningSection
    schedule: ScheduleSection = msgspec.field(default_factory=ScheduleSection)
    storage: StorageSection = msgspec.field(default_factory=StorageSection)
    bus: list[BusConfig] = []
    meter: list[MeterConfig] = []
    coefficients: dict[str, float] = {}  # energy variety -> kgce per unit (overrides GB/T 2589)
    # Where this config was loaded from; not a TOML key.
    source: str = ""
    warnings: list[str] = []

    def bus_named(self, name: str) -> BusConfig:
        return next(b for b in self.bus if b.name == name)

    def meter_named(self, name: str) -> MeterConfig:
        return next(m for m in self.meter if m.name == name)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.agent.timezone)

    @property
    def db_path(self) -> Path:
        return Path(self.agent.data_dir) / "agent.db"


class ProfileInfo(Base, kw_only=True):
    name: Name
    manufacturer: str
    model: str
    kind: str  # electricity, gas, steam, heat, water, ...
    source: str  # where the register map came from (datasheet title and URL)
    notes: str = ""
    probe_point: str
    max_registers: Annotated[int, Meta(ge=1, le=125)] = 125
    max_gap: Annotated[int, Meta(ge=0, le=124)] = 10
    pause_ms: Annotated[int, Meta(ge=0, le=10000)] = 0
    connect_pause_ms: Annotated[int, Meta(ge=0, le=10000)] = 0
    default_serial: str | None = None  # e.g. "9600 8N1"


class Profile(Base, kw_only=True):
    profile: ProfileInfo
    point: list[PointConfig]


class ConfigError(Exception):
    """One or more configuration mistakes, each already one self-contained line."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines




def profile_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    # Installed wheel: drivers/profiles; source checkout or editable install: config/profiles.
    return [here.parent / "drivers" / "profiles", here.parent / "config" / "profiles"]


def load_profile(name: str) -> Profile:
    for d in profile_dirs():
        f = d / f"{name}.toml"
        if f.is_file():
            return _decode(f, Profile)
    raise KeyError(name)


def profile_names() -> list[str]:
    names: set[str] = set()
    for d in profile_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve a config. Raises ConfigError; warnings land in .warnings."""
    path = Path(path)
    cfg = _decode(path, Config)
    cfg.source = str(path)
    errors: list[str] = []
    _check(cfg, path, errors)
    if errors:
        raise ConfigError(errors)
    return cfg


def _decode(path: Path, kind: type[_T]) -> _T:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    if kind is Config:
        _refuse_internal_keys(path, raw)
    try:
        return msgspec.convert(raw, kind, strict=True)
    except msgspec.ValidationError as e:
        raise ConfigError([f"{path}: {_explain(str(e), kind)}"]) from None


def _refuse_internal_keys(path: Path, raw: dict[str, Any]) -> None:
    """Fields the loader fills in are not TOML keys; msgspec would otherwise accept them."""
    for key in ("source", "warnings"):
        if key in raw:
            raise ConfigError([f"{path}: {key}: unknown key"])
    meters = raw.get("meter")
    if isinstance(meters, list):
        for i, m in enumerate(meters):
            if isinstance(m, dict) and "points" in m:
                raise ConfigError([f"{path}: meter[{i}].points: unknown key (did you mean [[meter.point]]?)"])


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _explain(text: str, root: type) -> str:
    """Turn msgspec's message into `key.path: expected …, got …`."""
    m = _AT.match(text)
    msg, path = (m.group("msg"), (m.group("path") or "")) if m else (text, "")
    path = path.lstrip(".")
    if u := re.match(r"Object contains unknown field `([^`]+)`", msg):
        return f"{_join(path, u.group(1))}: unknown key"
    if u := re.match(r"Object missing required field `([^`]+)`", msg):
        return f"{_join(path, u.group(1))}: required key is missing"
    if u := re.match(r"Invalid enum value (.+)", msg):
        choices = _choices(root, path)
        got = u.group(1).replace("'", '"')
        if choices:
            return f"{path}: expected one of {','.join(map(str, choices))}, got {got}"
        return f"{path}: unexpected value {got}"
    if u := re.match(r"Expected `([^`]+)`, got `([^`]+)`", msg):
        want = u.group(1)
        choices = _choices(root, path)
        if choices:
            want = "one of " + ",".join(map(str, choices))
        return f"{path or '(top level)'}: expected {want}, got {u.group(2)}"
    if u := re.match(r"Expected `str` matching regex (.+)", msg):
        return f"{path}: expected a name of letters, digits, '_', '.', '-' (regex {u.group(1)})"
    msg = msg.replace("`", "")
    return f"{path or '(top level)'}: {msg[0].lower() + msg[1:] if msg else msg}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _choices(root: type, path: str) -> list[Any] | None:
    """The allowed literal values at `path` (e.g. meter[0].point[2].type), if it is a Literal."""
    t: Any = root
    for part in re.findall(r"[^.\[\]]+", path):
        if part.isdigit():
            continue
        t = _unwrap(t)
        if not (isinstance(t, type) and issubclass(t, Struct)):
            return None
        hints = typing.get_type_hints(t, include_extras=True)
        if part not in hints:
            return None
        t = hints[part]
    t = _unwrap(t)
    if typing.get_origin(t) is Literal:
        return list(typing.get_args(t))
    return None


def _unwrap(t: Any) -> Any:
    while True:
        origin = typing.get_origin(t)
        if origin is Annotated:
            t = typing.get_args(t)[0]
        elif origin in (list, typing.Union) or str(origin) == "<class 'types.UnionType'>":
            args = [a for a in typing.get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t


def _check(cfg: Config, path: Path, errors: list[str]) -> None:
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
    except (ZoneInfoNotFoundError, ValueError):
        err("agent.timezone", f"expected an IANA time zone like Asia/Shanghai, got {cfg.agent.timezone!r}")

    p = cfg.platform
    if p.reconnect_max < p.reconnect_min:
        err("platform.reconnect_max", "expected a value ≥ platform.reconnect_min")
    if (p.cert_file is None) != (p.key_file is None):
        err("platform.cert_file", "cert_file and key_file go together (TLS client certificate)")
    if (p.ca_file or p.cert_file) and not p.tls:
        err("platform.tls", "expected true when ca_file or cert_file is set")
    if "#" in p.topic_prefix or "+" in p.topic_prefix or p.topic_prefix.endswith("/"):
        err("platform.topic_prefix", f"expected an MQTT topic without wildcards, got {p.topic_prefix!r}")

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
        elif b.kind == "modbus-rtu":
            if not b.device:
                err(f"bus[{i}].device", "required for kind modbus-rtu (e.g. /dev/ttyS1)")
            if b.host or b.port:
                err(f"bus[{i}].host", "not used by kind modbus-rtu")

    meters: dict[str, int] = {}
    units: dict[tuple[str, int], int] = {}
    for i, m in enumerate(cfg.meter):
        key = f"meter[{i}]"
        if m.name in meters:
            err(f"{key}.name", f"duplicate meter name {m.name!r} (also meter[{meters[m.name]}])")
        meters[m.name] = i
        if m.bus not in buses:
            known = ", ".join(buses) or "none configured"
            err(f"{key}.bus", f"unknown bus {m.bus!r} (buses: {known})")
        elif (m.bus, m.unit) in units:
            err(f"{key}.unit", f"unit {m.unit} on bus {m.bus!r} is already meter[{units[m.bus, m.unit]}]")
        else:
            units[m.bus, m.unit] = i
        if m.unit == 0:
            err(f"{key}.unit", "expected 1–247 (0 is broadcast and never answers)")
        _resolve_points(cfg, m, key, err)


def _resolve_points(cfg: Config, m: MeterConfig, key: str, err: Any) -> None:
    points: list[PointConfig] = []
    info: ProfileInfo | None = None
    if m.profile:
        try:
            prof = load_profile(m.profile)
        except KeyError:
            err(f"{key}.profile", f"unknown profile {m.profile!r} (known: {', '.join(profile_names())})")
            return
        except ConfigError as e:
            err(f"{key}.profile", f"profile {m.profile!r} is broken: {e.lines[0]}")
            return
        info = prof.profile
        points.extend(prof.point)
    names = {p.name for p in points}
    for j, p in enumerate(m.point):
        if p.name in names:
            # An inline point with a profile point's name replaces it (site-specific override).
            points = [q for q in points if q.name != p.name]
        names.add(p.name)
        points.append(p)
        _check_point(p, f"{key}.point[{j}]", err)
    if not points:
        err(key, "no points: give a profile or at least one [[meter.point]]")
    for pname, code in m.codes.items():
        if pname not in names:
            err(f"{key}.codes.{pname}", f"no point named {pname!r} on this meter")
        elif not DATA_CODE.match(code):
            err(f"{key}.codes.{pname}", f"expected a data code PP-UU-EEEE-CCTTTT-DD, got {code!r}")
    resolved = []
    for p in points:
        if p.name in m.codes:
            p = msgspec.structs.replace(p, code=m.codes[p.name])
        resolved.append(p)
    m.points = resolved
    if m.max_registers is None:
        m.max_registers = info.max_registers if info else 125
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


def _check_point(p: PointConfig, key: str, err: Any) -> None:
    if p.code is not None and not DATA_CODE.match(p.code):
        err(f"{key}.code", f"expected a data code PP-UU-EEEE-CCTTTT-DD, got {p.code!r}")
    if p.register + p.count > 65536:
        err(f"{key}.register", f"a {p.type} at {p.register} runs past register 65535")
    if p.scale == 0:
        err(f"{key}.scale", "expected a non-zero number")
    if p.modulus is not None and p.kind != "counter":
        err(f"{key}.modulus", "only counters roll over; set kind = \"counter\" or remove modulus")
