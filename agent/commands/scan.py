"""`energy-agent scan BUS`: find the meters answering on a bus and guess their profiles.

For commissioning: which unit ids answer, at which serial settings, and which shipped profile
each one looks like. Every unit id is sent the probe read of each known profile. Any reply,
even a Modbus exception, means a device sits at that id; a probe point that answers with a
value plausible for its quantity (a voltage of 50–500 V, a frequency of 45–65 Hz …) names that
profile as a candidate.

A correctly framed request to an unmapped register must be answered with exception 2 by any
Modbus slave, so silence to the first probe means nobody is at that id (or the serial settings
are wrong) and the other probes are skipped; `--thorough` sends them anyway, for meters that
stay silent on registers they do not have. A full sweep still takes minutes — 247 ids ×
timeout per setting — so progress goes to stderr.

The scan opens the port itself: it refuses to run while another program (the daemon) holds it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from agent.commands._common import add_config_argument, load_or_exit

if TYPE_CHECKING:
    from drivers.base import Driver
    from drivers.model import BusConfig, MeterConfig, PointConfig

EX_PORT_BUSY = 2
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)

# Plausible ranges per canonical quantity (point-name prefix), in the profiles' units. They are
# wide on purpose: they tell a meter's real probe register from another model's register that
# happens to exist at the same address, not a healthy value from a faulty one.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "voltage": (50.0, 500.0),  # V, low-voltage phase or line voltage
    "frequency": (45.0, 65.0),  # Hz
    "current": (0.0, 10_000.0),  # A
    "power_factor": (-1.0, 1.0),
    "active_power": (-100_000.0, 100_000.0),  # kW
    "reactive_power": (-100_000.0, 100_000.0),  # kvar
    "import_": (0.0, 1e10),  # energy counters: kWh, kvarh
    "export_": (0.0, 1e10),
    "flow_rate": (0.0, 1e6),  # m3/h
    "volume": (0.0, 1e12),  # m3
}


def plausible(point: str, value: float) -> bool:
    for prefix, (low, high) in PLAUSIBLE.items():
        if point.startswith(prefix):
            return low <= value <= high
    return value == value  # an unknown quantity: any number (not NaN) will do


@dataclass
class Probe:
    """One distinct probe read, and the profiles whose probe point it is."""

    point: PointConfig
    profiles: list[str]


@dataclass
class Found:
    unit: int
    serial: str
    candidates: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("bus", help="bus name from the config")
    parser.add_argument("--units", default="1-247", help="unit ids, e.g. 1-247 or 1-20,31 (default 1-247)")
    parser.add_argument("--bauds", help="baud rates to try, e.g. 9600,19200 (default: the bus's)")
    parser.add_argument("--parities", help="parities to try, e.g. N,E (default: the bus's)")
    parser.add_argument("--timeout", type=float, default=0.2, help="seconds per probe (default 0.2)")
    parser.add_argument("--profiles", help="only these profiles' probes (default: all shipped)")
    parser.add_argument("--thorough", action="store_true",
                        help="send every probe even to ids silent on the first one")
    parser.add_argument("--address", help="DL/T 645 / CJ/T 188: the meter number to probe instead of "
                        "asking AA…AA (which works with one meter on the line only)")


def run(args: argparse.Namespace) -> int:
    from drivers.profiles import profile_names

    cfg = load_or_exit(args.config)
    names = [b.name for b in cfg.bus]
    if args.bus not in names:
        print(f"error: no bus named {args.bus!r} (buses: {', '.join(names) or 'none'})", file=sys.stderr)
        return 2
    bus = cfg.bus_named(args.bus)
    from drivers.model import BUS_PROTOCOL
    from drivers.profiles import load_profile

    protocol = BUS_PROTOCOL[bus.kind]
    if args.profiles:
        profiles = args.profiles.split(",")
        other = [n for n in profiles if _protocol_of(n, load_profile) not in (protocol, None)]
        if other:
            print(f"error: --profiles: {', '.join(other)} do(es) not speak {protocol}, which bus "
                  f"{bus.name} carries (a line carries one protocol)", file=sys.stderr)
            return 2
    else:  # a line carries one protocol: only its profiles can match
        profiles = [n for n in profile_names() if _protocol_of(n, load_profile) == protocol]
    if protocol != "modbus":
        return _scan_di(bus, profiles, args.timeout, args.address)
    if args.address:
        print(f"error: --address: bus {bus.name} is Modbus; give --units", file=sys.stderr)
        return 2
    try:
        units = parse_units(args.units)
        settings = serial_settings(bus, args.bauds, args.parities)
        probes = probes_for(profiles)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("error: --timeout: expected seconds > 0", file=sys.stderr)
        return 2
    if bus.kind == "modbus-rtu" and (problem := port_in_use(bus.device or "")):
        print(f"error: {problem}", file=sys.stderr)
        return EX_PORT_BUSY
    # Exception replies are what a scan expects; the drivers' per-request warnings are noise here.
    logging.getLogger("drivers").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    from drivers.base import BusFault

    try:
        found = asyncio.run(scan(bus, units, settings, probes, args.timeout, args.thorough, sys.stderr))
    except BusFault:
        return EX_PORT_BUSY  # each refused setting was named on its own line already
    print_table(found, sys.stdout)
    return 0 if found else 1


def _protocol_of(name: str, load: Any) -> str | None:
    try:
        return str(load(name).profile.protocol)
    except Exception:  # a broken profile is reported when it is used, not here
        return None


def _scan_di(bus: BusConfig, profiles: list[str], timeout: float, address: str | None) -> int:
    from agent.commands.scan_di import scan_line

    if problem := port_in_use(bus.device or ""):
        print(f"error: {problem}", file=sys.stderr)
        return EX_PORT_BUSY
    logging.getLogger("drivers").setLevel(logging.ERROR)
    if address is not None and not (address.isdigit() and len(address) <= (12 if bus.kind == "dlt645" else 14)):
        print(f"error: --address: expected the meter number from its nameplate, got {address!r}",
              file=sys.stderr)
        return 2
    rows = asyncio.run(scan_line(bus, profiles, timeout, sys.stderr, address))
    if not rows:
        print("no meter answered the address query (AA…AA) — with more than one meter on the line "
              "they answer at once; disconnect the others or read the number off the nameplate "
              "and give it with --address")
        return 1
    for address, serial, candidates, evidence in rows:
        print(f"address {address}  {serial}  candidates: {', '.join(candidates) or '(unknown)'}")
        for e in evidence:
            print(f"  {e}")
    return 0


def parse_units(text: str) -> list[int]:
    units: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"--units: expected ids like 1-247 or 3,17, got {text!r}") from None
        if not 1 <= a <= b <= 247:
            raise ValueError(f"--units: ids run from 1 to 247 (0 is broadcast), got {part!r}")
        units.update(range(a, b + 1))
    return sorted(units)


def serial_settings(bus: BusConfig, bauds: str | None, parities: str | None) -> list[BusConfig]:
    """The bus once per baud × parity to try (just the bus itself when none are given)."""
    if bus.kind != "modbus-rtu":
        if bauds or parities:
            raise ValueError(f"--bauds/--parities: bus {bus.name} is {bus.kind}; its converter "
                             "sets the serial line")
        return [bus]
    try:
        baud_list = [int(b) for b in bauds.split(",")] if bauds else [bus.baud]
    except ValueError:
        raise ValueError(f"--bauds: expected numbers like 9600,19200, got {bauds!r}") from None
    for b in baud_list:
        if b not in BAUDS:
            raise ValueError(f"--bauds: {b} is not one of {','.join(map(str, BAUDS))}")
    parity_list = [p.strip().upper() for p in parities.split(",")] if parities else [bus.parity]
    for p in parity_list:
        if p not in ("N", "E", "O"):
            raise ValueError(f"--parities: expected N, E or O, got {p!r}")
    return [msgspec.structs.replace(bus, baud=b, parity=p) for b in baud_list for p in parity_list]


def probes_for(profiles: list[str]) -> list[Probe]:
    """Each profile's probe point; profiles probing the same register the same way share it."""
    from agent.config import ConfigError
    from drivers.profiles import load_profile, profile_names

    probes: list[Probe] = []
    for name in profiles:
        try:
            prof = load_profile(name)
        except KeyError:
            raise ValueError(f"--profiles: unknown profile {name!r} "
                             f"(known: {', '.join(profile_names())})") from None
        except ConfigError as e:
            raise ValueError(f"profile {name!r} is broken: {e.lines[0]}") from None
        point = next(p for p in prof.point if p.name == prof.profile.probe_point)
        key = (point.function, point.register, point.type, point.order, point.scale, point.offset)
        same = next((pr for pr in probes if _key(pr.point) == key), None)
        if same is None:
            probes.append(Probe(point, [name]))
        else:
            same.profiles.append(name)
    return probes


def _key(p: PointConfig) -> tuple[object, ...]:
    return (p.function, p.register, p.type, p.order, p.scale, p.offset)


def port_in_use(device: str) -> str | None:
    """Why the port cannot be had exclusively, or None. Opened and closed again at once: the
    driver re-opens it (exclusively too) for each serial setting."""
    import serial

    try:
        port = serial.serial_for_url(device, exclusive=True, do_not_open=False)
    except serial.SerialException as e:
        if "lock" in str(e).lower():
            return (f"{device} is in use by another program (is the energy-agent daemon running? "
                    "stop it first: systemctl stop energy-agent)")
        return f"cannot open {device}: {e} — check the device path and its permissions"
    port.close()
    return None


def describe_serial(bus: BusConfig) -> str:
    if bus.kind not in ("modbus-rtu", "dlt645", "cjt188"):
        return bus.kind
    return f"{bus.baud} {bus.data_bits}{bus.parity}{bus.stop_bits}"


async def scan(
    bus: BusConfig,
    units: list[int],
    settings: list[BusConfig],
    probes: list[Probe],
    timeout: float,
    thorough: bool,
    progress: TextIO,
) -> list[Found]:
    from drivers.base import BusFault
    from drivers.factory import open_driver

    found: list[Found] = []
    refused: list[str] = []  # settings the port could not be opened with
    total, done = len(units) * len(settings), 0
    tty = progress.isatty()
    for setting in settings:
        setting = msgspec.structs.replace(setting, timeout=timeout, retries=0)
        serial = describe_serial(setting)
        driver = open_driver(setting)
        try:
            for unit in units:
                try:
                    hit = await probe_unit(driver, setting, unit, probes, thorough)
                except BusFault as e:
                    # One line for the setting (a port refusing even parity, say); the others
                    # are still tried.
                    progress.write(f"{chr(10) if tty else ''}error: {e}\n")
                    refused.append(str(e))
                    done += len(units) - units.index(unit)
                    break
                done += 1
                if hit is not None:
                    hit.serial = serial
                    found.append(hit)
                if tty:
                    progress.write(f"\rscan {serial}: unit {unit} ({done}/{total}), "
                                   f"{len(found)} found ")
                elif done % 10 == 0 or done == total:
                    progress.write(f"scan {serial}: up to unit {unit} ({done}/{total}), "
                                   f"{len(found)} found\n")
                progress.flush()
        finally:
            await driver.close()
    if tty:
        progress.write("\n")
    if len(refused) == len(settings):
        raise BusFault(bus.name, f"no serial setting could be used ({len(refused)} tried)")
    return found


async def probe_unit(
    driver: Driver, bus: BusConfig, unit: int, probes: list[Probe], thorough: bool
) -> Found | None:
    from drivers.base import BusFault, MeterError, Quality
    from drivers.modbus import EXCEPTION_NAMES

    hit = Found(unit, "")
    answered = False
    for i, probe in enumerate(probes):
        meter = _probe_meter(bus, f"scan-{unit}-{i}", unit, probe.point)
        names = ",".join(probe.profiles)
        try:
            reading = (await driver.read(meter))[0]
        except BusFault:
            raise  # the port, not this id: the caller says so once
        except MeterError as e:
            if e.code is not None:
                # Any well-formed reply is a device at this id, an exception included: a meter
                # whose map matches no shipped profile refuses their probe registers (2).
                answered = True
                what = EXCEPTION_NAMES.get(e.code, "unknown exception")
                hit.evidence.append(f"{names}: exception {e.code} ({what})")
                continue
            if e.quality == Quality.TIMEOUT and not answered and not thorough:
                return None  # nobody at this id: skip the other probes
            continue
        if reading.quality == Quality.CORRUPT:
            continue  # a garbled or stray reply (perhaps another unit's late one): no proof
        answered = True
        if reading.quality != Quality.GOOD or reading.value is None:
            hit.evidence.append(f"{names}: {Quality(reading.quality).name.lower()}")
            continue
        p = probe.point
        shown = f"{p.name} = {reading.value:.6g} {p.unit}".rstrip()
        if plausible(p.name, reading.value):
            hit.candidates.extend(probe.profiles)
            hit.evidence.append(f"{names}: {shown}")
        else:
            hit.evidence.append(f"{names}: {shown} (implausible)")
    return hit if answered else None


def _probe_meter(bus: BusConfig, name: str, unit: int, point: PointConfig) -> MeterConfig:
    """A one-point meter. Its name is unique per unit and probe: the driver caches read plans
    by meter name."""
    from drivers.model import MeterConfig

    m = MeterConfig(name=name, bus=bus.name, unit=unit)
    m.points = [point]
    m.max_registers, m.max_gap, m.pause_ms, m.connect_pause_ms = 125, 0, 0, 0
    m.probe_point = point.name
    return m


def print_table(found: list[Found], out: TextIO) -> None:
    if not found:
        print("no device answered", file=out)
        return
    rows = [("UNIT", "SERIAL", "CANDIDATES", "EVIDENCE")]
    for f in found:
        candidates = ", ".join(f.candidates) or "(unknown)"
        rows.append((str(f.unit), f.serial, candidates, "; ".join(f.evidence)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip(),
              file=out)
    print(f"{len(found)} device(s) found", file=out)
