"""How long Modbus requests take on the wire: the bus budget behind the poll interval.

A Modbus RTU read of n registers is an 8-byte request and a (5 + 2n)-byte reply, each byte
sent as one character of 1 start + data + parity + stop bits, each frame followed by a silent
interval of 3.5 characters (fixed at 1.75 ms above 19200 baud, per the Modbus serial line
spec), plus the meter's turnaround between request and reply. At 9600 baud 8E1 with 30 ms
turnaround that is ≈ 17 transactions/s for 2 registers and ≈ 2.9/s for 125.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.planner import plan_meter

if TYPE_CHECKING:
    from drivers.model import BusConfig, MeterConfig

REQUEST_BYTES = 8  # unit, function, start (2), count (2), CRC (2)
REPLY_OVERHEAD_BYTES = 5  # unit, function, byte count, CRC (2)
TCP_REQUEST_SECONDS = 0.005  # a LAN round trip plus the meter's processing; an estimate
DEFAULT_TURNAROUND_S = 0.03


def character_bits(bus: BusConfig) -> int:
    """Bits per character on the line: start + data + parity + stop."""
    return 1 + bus.data_bits + (0 if bus.parity == "N" else 1) + bus.stop_bits


def character_seconds(bus: BusConfig) -> float:
    return character_bits(bus) / bus.baud


def silent_interval_seconds(bus: BusConfig) -> float:
    """The 3.5-character gap that ends an RTU frame (a fixed 1.75 ms above 19200 baud)."""
    if bus.baud > 19200:
        return 0.00175
    return 3.5 * character_seconds(bus)


def serial_request_seconds(bus: BusConfig, count: int, turnaround_s: float) -> float:
    chars = REQUEST_BYTES + REPLY_OVERHEAD_BYTES + 2 * count
    return chars * character_seconds(bus) + 2 * silent_interval_seconds(bus) + turnaround_s


def request_seconds(
    bus: BusConfig, count: int, turnaround_s: float = DEFAULT_TURNAROUND_S
) -> float:
    """One read request and its reply for `count` registers.

    modbus-rtu: the serial line time above. modbus-rtu-over-tcp: the same serial time (a
    serial line sits behind the converter, at the bus's baud settings) plus a TCP round trip.
    modbus-tcp: a small fixed estimate.
    """
    if bus.kind == "modbus-tcp":
        return TCP_REQUEST_SECONDS
    serial = serial_request_seconds(bus, count, turnaround_s)
    if bus.kind == "modbus-rtu-over-tcp":
        return serial + TCP_REQUEST_SECONDS
    return serial


# DL/T 645 / CJ/T 188: one DI per request. Request = preamble + header + DI (+ SER) + CS + 16;
# reply = (a preamble) + header + DI (+ SER) + values + CS + 16. The standard allows a meter
# 20–500 ms before it answers (DL/T 645-2007 §5.3); 50 ms is a typical meter.
DI_TURNAROUND_S = 0.05
DI_FRAME_BYTES = {"dlt645": (12, 4), "cjt188": (13, 3)}  # (frame overhead, DI [+ SER])


def di_request_seconds(bus: BusConfig, data_bytes: int, preamble: int = 4,
                       turnaround_s: float = DI_TURNAROUND_S) -> float:
    """One DI read and its reply carrying `data_bytes` of values."""
    overhead, di = DI_FRAME_BYTES[bus.kind]
    chars = 2 * (preamble + overhead + di) + data_bytes
    return chars * character_seconds(bus) + turnaround_s


def cycle_seconds(
    bus: BusConfig, meter: MeterConfig, turnaround_s: float = DEFAULT_TURNAROUND_S
) -> float:
    """Worst case bus time to read one answering meter: its planned requests plus its pauses."""
    if bus.kind in DI_FRAME_BYTES:
        from drivers.di_layout import plan_dis

        preamble = meter.frame.preamble if meter.frame else 4
        return sum(di_request_seconds(bus, r.data_bytes, preamble) for r in plan_dis(meter.points))
    plan = plan_meter(meter)
    pauses = max(len(plan) - 1, 0) * (meter.pause_ms or 0) / 1000
    return sum(request_seconds(bus, r.count, turnaround_s) for r in plan) + pauses


def dead_meter_seconds(bus: BusConfig) -> float:
    """Bus time a silent meter costs per cycle: the driver gives up on a meter after its first
    unanswered request, which is tried `retries` more times, each waiting `timeout` — on DL/T
    645 / CJ/T 188 lines plus the wire time of the request and a reply (drivers/serial_line.py
    waits for the frames' own time on top of `timeout`)."""
    if bus.kind in DI_FRAME_BYTES:
        return (bus.timeout + di_request_seconds(bus, 4, turnaround_s=0.0)) * (bus.retries + 1)
    return bus.timeout * (bus.retries + 1)

