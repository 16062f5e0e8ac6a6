"""The meter model: buses, meters, points, data types, byte orders and meter profiles.

These are the structs the drivers read by; the agent's configuration file composes them
(agent/config/schema.py) and fills in what a profile leaves open. They are validated by
msgspec as they are decoded: every range and choice below is checked on load.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
DataType = Literal["u16", "s16", "u32", "s32", "u64", "s64", "f32", "f64"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Function = Literal["holding", "input"]
PointKind = Literal["counter", "instantaneous"]
BusKind = Literal["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"]

# Registers per value of each data type: the one table the planner, codec and checks share.
REGISTERS: dict[str, int] = {
    "u16": 1, "s16": 1, "u32": 2, "s32": 2, "u64": 4, "s64": 4, "f32": 2, "f64": 4,
}


class Base(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


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
