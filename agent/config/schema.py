"""The agent's configuration file format: one TOML file, its sections as structs.

The meter model (buses, meters, points) belongs to the drivers (drivers/model.py); this file
composes it with the agent's own sections. Loading and cross-checks are in load.py/checks.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, get_args
from zoneinfo import ZoneInfo

import msgspec
from msgspec import Meta, Struct

from drivers.model import BusConfig, FilePath, MeterConfig, Name
from drivers.validation import pattern

EX_CONFIG = 78
# Use with .match or .fullmatch: \Z, unlike $, does not let a trailing newline through.
DATA_CODE = re.compile(r"\d{2}-\d{2}-\d{4}-\d{6}-\d{2}\Z")
# Bounds on what reaches MQTT (docs/operations.md, "Configuration limits"). MQTT allows a
# client id and a topic of up to 65,535 bytes, but brokers differ (MQTT 3.1.1 only promises
# 23 characters), and a long one only costs bytes on every packet: 128 is room for the
# default `energy-agent-{enterprise}-{gateway}` (at most 110) and any naming scheme.
MAX_CLIENT_ID_BYTES = 128
MAX_TOPIC_PREFIX_BYTES = 256
Seconds = Annotated[float, Meta(gt=0, le=86400)]  # any interval: finite, at most a day
Days = Annotated[float, Meta(gt=0, le=3660)]  # keep windows: at most ten years
# Free text for MQTT fields: no control characters (U+0000 is forbidden in MQTT strings).
MqttText = Annotated[str, pattern(r"\A[^\x00-\x1f\x7f-\x9f]*\Z", "text without control characters")]


class Base(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AgentSection(Base, kw_only=True):
    gateway: Name
    enterprise: Annotated[str, Meta(max_length=32)]  # unified social credit code, 18 characters
    timezone: Annotated[str, pattern(r"\A[A-Za-z0-9_+-]{1,32}(/[A-Za-z0-9_+-]{1,32}){0,2}\Z",
                                     "an IANA time zone like Asia/Shanghai")] = "Asia/Shanghai"
    data_dir: FilePath = "/var/lib/energy-agent"  # absolute (checked in checks.py)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class PlatformSection(Base, kw_only=True):
    # Required unless a [[destination]] lists brokers (config/destinations.py).
    host: Annotated[str, pattern(r"\A[^\x00-\x20\x7f/]{0,253}\Z",
                                 "a host name or IP address (up to 253 characters, no spaces or '/')")] = ""
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    client_id: MqttText | None = None  # default: energy-agent-{enterprise}-{gateway}
    topic_prefix: MqttText = "energy"
    ack: Literal["broker", "platform"] = "broker"
    ack_timeout: Seconds = 60.0  # seconds before a platform-ack resend
    # The platform's Ed25519 ack public keys (ack = "platform" needs one): each the base64 of
    # the raw 32 bytes, or an absolute path to a file holding it (base64 or PEM).
    ack_keys: list[str] = []
    mqtt_version: Literal["3.1.1", "5"] = "3.1.1"
    keepalive: Annotated[int, Meta(ge=5, le=3600)] = 60
    inflight: Annotated[int, Meta(ge=1, le=1000)] = 20
    # The broker's largest packet (mosquitto's max_packet_size, a cloud broker's message limit).
    # An envelope that would not fit is set aside instead of blocking the queue. MQTT 5 brokers
    # announce theirs on connect; the smaller of the two applies.
    max_packet_bytes: Annotated[int, Meta(ge=1024, le=268_435_460)] | None = None
    # Seconds between reconnect attempts: doubling from min to max, jittered (runtime/backoff.py).
    # A low max bounds the wait after the broker is back, whatever the outage length.
    reconnect_min: Seconds = 1.0
    reconnect_max: Seconds = 10.0
    tls: bool = False
    # Why plain MQTT to a host that is not this machine is acceptable here (agent/config/
    # transport.py); without it, tls = false to anything but loopback is refused.
    allow_plaintext: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    username: Annotated[str, pattern(r"\A[^\x00-\x1f\x7f]{1,256}\Z",
                                     "1-256 characters, no control characters")] | None = None
    password_file: FilePath | None = None
    send_raw: bool = True  # also upload every raw sample, not only interval statistics


EnvelopeType = Literal["readings", "interval", "daily", "monthly", "manual", "status", "chain"]
ENVELOPE_TYPES: tuple[str, ...] = get_args(EnvelopeType)
# The provincial interface carries statistics only: interval (statType 0), day (1), month (2)
# and manual entries (inputType 5); samples and heartbeats have no record form there.
PROVINCE_TYPES = ("interval", "daily", "monthly", "manual")


class MqttDestination(PlatformSection, tag="mqtt", tag_field="kind", kw_only=True):
    """An MQTT broker, or a cluster of them: `brokers = ["host:port", …]` are tried in turn."""

    name: Name
    types: list[EnvelopeType] | None = None  # None: every type
    brokers: list[str] = []


class ProvinceItem(Base, kw_only=True):
    """A data item to register beyond the metered points (manual entries), or bounds and a
    name for a metered one."""

    code: str
    name: str | None = None
    input_type: Annotated[int, Meta(ge=1, le=5)] = 5
    stat_types: list[Literal[0, 1, 2]] = msgspec.field(default_factory=lambda: [2])
    min: str = "0"
    max: str = "999999999"


class ProvinceHttpsDestination(Base, tag="province-https", tag_field="kind", kw_only=True):
    """The de-facto provincial HTTPS/JSON interface (docs/province.md)."""

    name: Name
    types: list[EnvelopeType] | None = None  # None: interval, daily, monthly, manual
    url: str  # base URL; /requestAK and /dataCollectConfigure are under it
    data_path: str = "/enterpriseData"  # used when the token reply names no data URL
    enterprise_code: str | None = None  # default: agent.enterprise
    device_id: str | None = None  # default: agent.gateway
    secret_key_file: str  # the working key (secretKey) the province issued for the enterprise
    password_file: str
    ca_file: str | None = None  # default: the system's trust store
    allow_plain_http: bool = False  # the explicit waiver an http:// url needs
    timeout: Annotated[float, Meta(gt=0, le=300)] = 15.0
    batch: Annotated[int, Meta(ge=1, le=5000)] = 200  # records per data post
    scope: int = 1
    token_refresh_margin: Annotated[float, Meta(ge=0, le=86400)] = 120.0  # seconds before expiry
    max_reply_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024
    backoff_min: Seconds = 1.0
    backoff_max: Seconds = 60.0
    item: list[ProvinceItem] = []


Destination = MqttDestination | ProvinceHttpsDestination


class SigningSection(Base, kw_only=True):
    key_file: FilePath
    # Only ever the key's own id (16 hex digits, `energy-agent keygen` prints it); checked
    # against the key file by check-config and run. Absent: derived from the key.
    key_id: Annotated[str, pattern(r"\A[0-9a-f]{16}\Z", "16 lowercase hex digits")] | None = None


class ScheduleSection(Base, kw_only=True):
    poll_interval: Annotated[float, Meta(gt=0, le=3600)] = 60.0  # seconds, aligned to the clock
    seal_interval: Annotated[float, Meta(gt=0, le=3600)] = 60.0  # how often samples are sealed
    interval_minutes: Literal[15, 30, 60] = 15
    daily_seal_at: Annotated[str, pattern(r"\A([01]\d|2[0-3]):[0-5]\d\Z", "a time HH:MM")] = "00:05"
    heartbeat: Annotated[float, Meta(ge=1, le=86400)] = 300.0  # seconds between status envelopes


class StorageSection(Base, kw_only=True):
    raw_keep_days: Days = 31.0  # raw samples, once sealed
    # Interval, daily and monthly envelopes: the regulation asks for at least 6 months.
    history_keep_days: Annotated[float, Meta(ge=183, le=3660)] = 190.0
    # The store's size limit on disk, 100 KiB (tests and HIL runs fill it in seconds) to 1 TiB.
    budget_mb: Annotated[float, Meta(ge=0.1, le=1_048_576)] = 1024.0
    on_full: Literal["drop-oldest"] = "drop-oldest"  # what happens to unsent data when full
    retention_interval: Annotated[float, Meta(ge=1, le=86400)] = 3600.0  # seconds between passes


class BoundarySection(Base, kw_only=True):
    """The enterprise's metering boundary, by data code. A code's usage field (DD) gives its
    default role through config/codes/usages.toml; these lists override it."""

    inputs: list[str] = []  # bought in or received: counted into the total
    outputs: list[str] = []  # sold or transferred out: subtracted
    sub_meters: list[str] = []  # inside the boundary: kept and uploaded, never summed
    # The item 综合能源消费总量 (tce) is uploaded under; class 08 = energy-efficiency indicators.
    total_code: str = "00-00-0000-080000-00"
    # product output code (class 04) -> code of its unit consumption (kgce per unit of product);
    # a product not listed gets its own code with class 04 replaced by 08.
    products: dict[str, str] = {}


class CodeCoefficient(Base, kw_only=True):
    """One data code's standard-coal coefficient: exactly one way of giving it."""

    kgce: Annotated[float, Meta(gt=0, le=1e6)] | None = None  # kgce per base unit (kWh, kg, m3, MJ)
    enthalpy_mj_per_kg: Annotated[float, Meta(gt=0, lt=5)] | None = None  # steam
    pressure_mpa: Annotated[float, Meta(gt=0, le=22)] | None = None  # saturated steam, absolute
    calorific_mj_per_m3: Annotated[float, Meta(gt=0, lt=100)] | None = None  # gas, net (低位)
    source: str = ""  # where the figure comes from (test report, supplier invoice, …)


class WebSection(Base, kw_only=True):
    """`energy-agent serve`: the energy manager's local web page (docs/web.md)."""

    listen: str = "127.0.0.1"  # anything but loopback needs tls_cert, tls_key and password_file
    port: Annotated[int, Meta(ge=1, le=65535)] = 8640
    tls_cert: str | None = None
    tls_key: str | None = None
    password_file: str | None = None  # made by `energy-agent web-passwd`; set: a login is required
    session_hours: Annotated[float, Meta(gt=0, le=720)] = 12.0
    lockout_failures: Annotated[int, Meta(ge=1, le=100)] = 5  # failed logins before a lockout
    lockout_minutes: Annotated[float, Meta(gt=0, le=1440)] = 15.0


class Config(Base, kw_only=True):
    agent: AgentSection
    # The single MQTT destination of old; read as [[destination]] name = "mqtt" (destinations.py).
    platform: PlatformSection | None = None
    destination: list[MqttDestination | ProvinceHttpsDestination] = []
    signing: SigningSection
    schedule: ScheduleSection = msgspec.field(default_factory=ScheduleSection)
    storage: StorageSection = msgspec.field(default_factory=StorageSection)
    bus: list[BusConfig] = []
    meter: list[MeterConfig] = []
    web: WebSection = msgspec.field(default_factory=WebSection)
    # energy variety -> kgce per unit (overrides GB/T 2589): positive, finite
    coefficients: dict[Name, Annotated[float, Meta(gt=0, le=1e6)]] = {}
    coefficient: dict[str, CodeCoefficient] = {}  # data code -> its own coefficient
    boundary: BoundarySection = msgspec.field(default_factory=BoundarySection)
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
