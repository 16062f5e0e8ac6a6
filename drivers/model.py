"""The meter model: buses, meters, points, data types, byte orders and meter profiles.

These are the structs the drivers read by; the agent's configuration file composes them
(agent/config/schema.py) and fills in what a profile leaves open. They are validated by
msgspec as they are decoded: every range and choice below is checked on load.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from drivers.validation import pattern

# Patterns are applied with re.search: \A and \Z, not ^ and $ (which lets a trailing newline
# through), so a name that reaches a log line, a topic or a file name is exactly what it shows.
Name = Annotated[str, pattern(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z",
                               "a name of 1-64 letters, digits, '_', '.', '-' (first a letter or digit)")]
# Free text that ends up in envelopes and logs (units): no control characters.
Label = Annotated[str, pattern(r"\A[^\x00-\x1f\x7f]{0,32}\Z",
                               "at most 32 characters, no control characters")]
# A host name or address: no spaces, no control characters, at most a DNS name's 253.
Host = Annotated[str, pattern(r"\A[^\x00-\x20\x7f/]{1,253}\Z",
                              "a host name or IP address (1-253 characters, no spaces or '/')")]
# A file path or device: no NUL (the OS refuses it with a ValueError), bounded by PATH_MAX.
FilePath = Annotated[str, pattern(r"\A[^\x00]{1,4095}\Z",
                                  "a file path of 1-4095 characters without NUL")]
# Numbers a meter's reading is multiplied by, added to, or wraps at: finite and bounded, so a
# value cannot become inf or nan on its way to an envelope (a TOML nan or 1e308 is refused).
Scale = Annotated[float, Meta(ge=-1e12, le=1e12)]
Offset = Annotated[float, Meta(ge=-1e15, le=1e15)]
Modulus = Annotated[float, Meta(gt=0, le=2.0**64)]
DataType = Literal["u16", "s16", "u32", "s32", "u64", "s64", "f32", "f64"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Function = Literal["holding", "input"]
PointKind = Literal["counter", "instantaneous"]
BusKind = Literal["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp", "dlt645", "cjt188"]
MeterProtocol = Literal["modbus", "dlt645", "cjt188"]
ByteSequence = Literal["low-first", "high-first"]
# What a bus kind speaks: a line carries one protocol, and a meter's profile must speak it.
BUS_PROTOCOL: dict[str, str] = {
    "modbus-tcp": "modbus", "modbus-rtu": "modbus", "modbus-rtu-over-tcp": "modbus",
    "dlt645": "dlt645", "cjt188": "cjt188",
}
# Serial lines the agent opens itself (one owner per line): `device`, baud, parity, stop bits.
SERIAL_KINDS = ("modbus-rtu", "dlt645", "cjt188")

# Registers per value of each data type: the one table the planner, codec and checks share.
REGISTERS: dict[str, int] = {
    "u16": 1, "s16": 1, "u32": 2, "s32": 2, "u64": 4, "s64": 4, "f32": 2, "f64": 4,
}


class Base(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BusConfig(Base, kw_only=True):
    name: Name
    kind: BusKind
    host: Host | None = None  # modbus-tcp, modbus-rtu-over-tcp
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    device: FilePath | None = None  # serial kinds: /dev/ttyS1, /dev/ttyUSB0, or a pyserial URL
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "E"
    data_bits: Literal[7, 8] = 8
    stop_bits: Literal[1, 2] = 1
    timeout: Annotated[float, Meta(gt=0, le=30)] = 1.0  # seconds per request attempt
    retries: Annotated[int, Meta(ge=0, le=10)] = 1
    offline_after: Annotated[int, Meta(ge=1, le=1000)] = 3  # consecutive failed cycles
    offline_cooldown: Annotated[float, Meta(gt=0, le=86400)] = 300.0  # seconds before a retry probe


# frozen: load_config shares equal points between meters (see config_checks), so none may be
# changed in place. gc=False: 16 bytes less per point; a point holds only scalars, so it can
# never be part of a reference cycle.
class PointConfig(Base, kw_only=True, frozen=True, gc=False):
    name: Name
    # Modbus: the register. DL/T 645 / CJ/T 188: the data identifier instead (see below).
    register: Annotated[int, Meta(ge=0, le=65535)] | None = None
    function: Function = "holding"
    type: DataType = "u16"
    order: ByteOrder = "ABCD"
    scale: Scale = 1.0
    offset: Offset = 0.0
    unit: Label = ""
    kind: PointKind = "instantaneous"
    variety: Name | None = None  # energy variety, e.g. "electricity", "natural_gas"
    code: str | None = None  # data code PP-UU-EEEE-CCTTTT-DD
    decimals: Annotated[int, Meta(ge=0, le=9)] | None = None
    modulus: Modulus | None = None  # counter roll-over value when not implied by the type
    # DL/T 645 / CJ/T 188 (drivers/di_layout.py): the data identifier as the standard writes
    # it ("00010000", "901F"); where the value sits in the DI's reply data (`at`, bytes from
    # its start) and its BCD digit pattern (`format`, "XXXXXX.XX"); `signed`: sign in bit 7 of
    # the top byte; `unit_code`: a CJ/T 188 unit byte follows the value; `field`: a CJ/T 188
    # 901F field by name instead of at/format. Known DIs and fields fill these in on load.
    di: Annotated[str, Meta(pattern=r"\A[0-9A-Fa-f]{4}([0-9A-Fa-f]{4})?\Z")] | None = None
    at: Annotated[int, Meta(ge=0, le=250)] | None = None
    format: str | None = None
    signed: bool | None = None
    unit_code: bool | None = None
    field: str | None = None
    # A counter's plausible maximum rate, in its unit per hour (e.g. the meter's rated power in
    # kW for kWh): bounds how many wraps a long outage may hide and when a drop is a bad read.
    max_rate: Annotated[float, Meta(gt=0)] | None = None
    # This point is the meter's own daily freeze of the counter point named here (DL/T 645
    # 05060101 for forward active energy): the daily close may use it instead of interpolating.
    freeze_of: str | None = None

    @property
    def count(self) -> int:
        return REGISTERS[self.type]

    @property
    def value_decimals(self) -> int:
        """Decimal places on the wire when not configured: from a power-of-ten scale, else 3."""
        if self.decimals is not None:
            return self.decimals
        if self.format is not None:  # BCD: the digit pattern's decimals, shifted by the scale
            from drivers.bcd import parse_format

            s = abs(self.scale)
            shift = next((d for d in range(7) if abs(s * 10**d - round(s * 10**d)) < 1e-9), 6)
            return parse_format(self.format)[1] + shift
        if self.type.startswith("f"):
            return 3
        s = abs(self.scale)
        for d in range(10):
            if abs(s * 10**d - round(s * 10**d)) < 1e-9:
                return d
        return 6


class FrameOptions(Base, kw_only=True, frozen=True):
    """DL/T 645 / CJ/T 188 framing a model needs; the defaults are the standards'."""

    preamble: Annotated[int, Meta(ge=0, le=8)] = 4  # FE wake-up bytes before each request
    value_order: ByteSequence = "low-first"  # BCD byte order of values (some vendors reverse)
    di_order: ByteSequence = "low-first"  # CJ/T 188: 901F is sent 1F 90 by the standard
    ser: bool = True  # CJ/T 188: a sequence byte (SER) follows the DI
    meter_type: Annotated[str, Meta(pattern=r"\A[0-9A-Fa-f]{2}\Z")] | None = None  # CJ/T 188 T


class MeterConfig(Base, kw_only=True):
    name: Name
    bus: Name
    unit: Annotated[int, Meta(ge=0, le=255)] = 1  # Modbus unit id (0 = broadcast is refused)
    # DL/T 645 / CJ/T 188: the meter number as printed on the nameplate (12 / 14 digits).
    address: Annotated[str, Meta(pattern=r"\A[0-9]{1,14}\Z")] | None = None
    frame: FrameOptions | None = None  # overrides the profile's framing settings
    # A shipped profile's name, or a path to a profile file under the config's directory.
    profile: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    point: list[PointConfig] = []
    codes: dict[str, str] = {}  # point name -> data code, for points from a profile
    max_registers: Annotated[int, Meta(ge=1, le=125)] | None = None
    max_gap: Annotated[int, Meta(ge=0, le=124)] | None = None
    pause_ms: Annotated[int, Meta(ge=0, le=10000)] | None = None  # between requests
    connect_pause_ms: Annotated[int, Meta(ge=0, le=10000)] | None = None
    probe_point: Name | None = None
    # Filled by load_config from the profile and the inline points; not a TOML key.
    points: list[PointConfig] = []

    @property
    def label(self) -> str:
        """How logs and errors name the meter: where to find it on site."""
        return f'meter "{self.name}" (bus {self.bus}, {self.station})'

    def freezes(self) -> dict[str, str]:
        """Counter point -> the point holding the meter's own daily freeze of it (`freeze_of`):
        the daily close may take the day-boundary value from there instead of interpolating."""
        return {p.freeze_of: p.name for p in self.points if p.freeze_of}

    @property
    def station(self) -> str:
        """How messages name the meter on its bus: `unit 3`, or `address 123456789012`."""
        return f"address {self.address}" if self.address is not None else f"unit {self.unit}"


class ProfileInfo(Base, kw_only=True):
    name: Name
    manufacturer: str
    model: str
    kind: str  # electricity, gas, steam, heat, water, ...
    protocol: MeterProtocol = "modbus"
    source: str  # where the register map came from (datasheet title and URL)
    notes: str = ""
    probe_point: str
    max_registers: Annotated[int, Meta(ge=1, le=125)] = 125
    max_gap: Annotated[int, Meta(ge=0, le=124)] = 10
    pause_ms: Annotated[int, Meta(ge=0, le=10000)] = 0
    connect_pause_ms: Annotated[int, Meta(ge=0, le=10000)] = 0
    default_serial: str | None = None  # e.g. "9600 8N1"
    frame: FrameOptions | None = None  # DL/T 645 / CJ/T 188 vendor deviations


class Profile(Base, kw_only=True):
    profile: ProfileInfo
    point: list[PointConfig]
