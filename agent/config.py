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
from zoneinfo import ZoneInfo

import msgspec
from msgspec import Meta, Struct

from agent.config_errors import explain

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
    # The broker's largest packet (mosquitto's max_packet_size, a cloud broker's message limit).
    # An envelope that would not fit is set aside instead of blocking the queue. MQTT 5 brokers
    # announce theirs on connect; the smaller of the two applies.
    max_packet_bytes: Annotated[int, Meta(ge=1024, le=268_435_460)] | None = None
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


# frozen: load_config shares equal points between meters (see config_checks), so none may be
# changed in place. gc=False: 16 bytes less per point; a point holds only scalars, so it can
# never be part of a reference cycle.
class PointConfig(Base, kw_only=True, frozen=True, gc=False):
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
    from agent.config_checks import check  # it imports this module's types

    errors: list[str] = []
    check(cfg, path, errors)
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
    _share_strings(raw, {})
    try:
        return msgspec.convert(raw, kind, strict=True)
    except msgspec.ValidationError as e:
        raise ConfigError([f"{path}: {explain(str(e), kind)}"]) from None


def _share_strings(node: Any, seen: dict[str, str]) -> None:
    """Make equal string values one object: the TOML parser gives every meter its own "p0",
    "kWh" …, and the config keeps them for the life of the process."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, str):
            node[key] = seen.setdefault(value, value)
        elif isinstance(value, dict | list):
            _share_strings(value, seen)


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
