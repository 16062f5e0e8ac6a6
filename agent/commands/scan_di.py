"""`energy-agent scan BUS` on a DL/T 645 or CJ/T 188 line: find the meter and guess its profile.

These protocols address meters by their 12/14-digit number, which no sweep can cover, so a
scan asks "whoever listens" (address AA…AA, DL/T 645 read-address 13h / CJ/T 188 03h) — that
works only with ONE meter on the line: disconnect the others while commissioning, or read the
number off each nameplate. The found meter is then sent each matching profile's probe DI, and
a plausible value names the profile as a candidate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

import msgspec

if TYPE_CHECKING:
    from drivers.model import BusConfig


Found = tuple[str, str, list[str], list[str]]  # address, serial settings, candidates, evidence


async def scan_line(bus: BusConfig, profiles: list[str], timeout: float, progress: TextIO,
                    address: str | None = None) -> list[Found]:
    """[(address, serial, candidates, evidence)] for the meter answering the wildcard (or at
    `address`, when given), if any."""
    from agent.commands.scan import describe_serial, plausible
    from drivers.base import MeterError, Quality
    from drivers.di_driver import DiDriver, RequestFailed
    from drivers.di_layout import resolve_point
    from drivers.factory import open_driver
    from drivers.model import FrameOptions, MeterConfig
    from drivers.profiles import load_profile

    setting = msgspec.structs.replace(bus, timeout=timeout, retries=1)
    driver = open_driver(setting)
    assert isinstance(driver, DiDriver)
    serial = describe_serial(setting)
    try:
        if address is None:
            progress.write(f"scan {serial}: asking AA…AA for the address (one meter on the line only)\n")
            try:
                found = await driver.read_address()
            except RequestFailed as e:
                progress.write(f"scan {serial}: {e.what}\n")
                return []
            address, _, meter_type = found.partition(" type ")
        else:
            meter_type = ""  # each profile's own
        candidates: list[str] = []
        evidence: list[str] = []
        for name in profiles:
            prof = load_profile(name)
            frame = prof.profile.frame or FrameOptions()
            if meter_type:
                frame = msgspec.structs.replace(frame, meter_type=meter_type)
            point = next(p for p in prof.point if p.name == prof.profile.probe_point)
            resolved = resolve_point(point, bus.kind, frame)
            if isinstance(resolved, str):
                evidence.append(f"{name}: {resolved}")
                continue
            m = MeterConfig(name=f"scan-{name}", bus=bus.name, address=address, frame=frame)
            m.points = [resolved]
            try:
                reading = (await driver.read(m))[0]
            except MeterError as e:
                evidence.append(f"{name}: {e.quality.name.lower()}")
                continue
            if reading.quality != Quality.GOOD or reading.value is None:
                evidence.append(f"{name}: {Quality(reading.quality).name.lower()}")
                continue
            shown = f"{point.name} = {reading.value:.6g} {point.unit}".rstrip()
            if plausible(point.name, reading.value):
                candidates.append(name)
                evidence.append(f"{name}: {shown}")
            else:
                evidence.append(f"{name}: {shown} (implausible)")
        if not candidates and all(e.endswith(": timeout") for e in evidence):
            return []  # nobody at that address
        where = f"{address} (type {meter_type}h)" if meter_type else address
        return [(where, serial, candidates, evidence)]
    finally:
        await driver.close()

