"""`energy-agent scan` as a field engineer runs it: a real process against meters on a pty line.

The line's relay is silent for every unit id except the meters', as a real RS-485 line is
(a pymodbus server alone would answer unknown ids with exception 11).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import pytest
import serial
from pymodbus.constants import ExcCodes

from agent.commands.scan import parse_units, plausible
from hil.serial_pair import serial_pair
from tests.rtu_sim import Switch, device_for, profile_meter, rtu_line

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, device: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
gateway = "gw-scan"
enterprise = "91370600780790663W"
data_dir = "{tmp_path}"

[platform]
host = "127.0.0.1"

[signing]
key_file = "{tmp_path}/signing.key"

[[bus]]
name = "rs485-1"
kind = "modbus-rtu"
device = "{device}"
baud = 9600
parity = "N"
""")
    return path


async def energy_agent(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *argv, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def rows(stdout: str) -> dict[int, list[str]]:
    """Table rows by unit id: [unit, serial, candidates, evidence] (columns are 2+ spaces apart)."""
    found = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 4 and cells[0].isdigit():
            found[int(cells[0])] = cells
    return found


def test_scan_finds_two_meters_and_names_their_profiles(tmp_path: Path) -> None:
    chint = profile_meter("a", 3, "chint-dtsu666")
    eastron = profile_meter("b", 17, "eastron-sdm630")
    devices = [device_for(3, chint.points), device_for(17, eastron.points, max_registers=60)]

    async def main() -> tuple[tuple[int, str, str], tuple[int, str, str], int, int]:
        async with rtu_line(devices, default="silent") as line:
            line.relay.set_fault(3, "pass")
            line.relay.set_fault(17, "pass")
            cfg = str(write_config(tmp_path, line.agent_port))
            full = await energy_agent("scan", "rs485-1", "-c", cfg, "--units", "1-20",
                                      "--timeout", "0.1")
            silent_unit_requests = len(line.relay.requests_for(5))
            meter_requests = len(line.relay.requests_for(3))
            none = await energy_agent("scan", "rs485-1", "-c", cfg, "--units", "4-6",
                                      "--timeout", "0.1")
            return full, none, silent_unit_requests, meter_requests

    (rc, out, err), (rc_none, out_none, _), silent_requests, meter_requests = asyncio.run(main())
    assert rc == 0, err
    table = rows(out)
    assert sorted(table) == [3, 17], out
    assert table[3][1:3] == ["9600 8N1", "chint-dtsu666"]
    assert table[17][1:3] == ["9600 8N1", "eastron-sdm630"]
    assert "chint-dtsu666: voltage_a = 229.72 V" in table[3][3]
    assert "eastron-sdm630: voltage_a = 229.5 V" in table[17][3]
    assert "2 device(s) found" in out
    # Progress for a pipe: plain lines, one per 10 units.
    assert "scan 9600 8N1: up to unit 10 (10/20), 1 found" in err
    assert "(20/20), 2 found" in err
    # An empty id costs one probe; a meter gets every profile's probe.
    assert silent_requests == 1
    assert meter_requests == 4
    assert rc_none == 1 and "no device answered" in out_none


def test_scan_refuses_a_port_someone_else_holds(tmp_path: Path) -> None:
    async def main() -> tuple[int, str, str]:
        meter = profile_meter("a", 1, "chint-dtsu666")
        async with rtu_line([device_for(1, meter.points)]) as line:
            cfg = str(write_config(tmp_path, line.agent_port))
            daemon = serial.serial_for_url(line.agent_port, exclusive=True)  # the daemon's hold
            try:
                return await energy_agent("scan", "rs485-1", "-c", cfg, "--units", "1-3")
            finally:
                daemon.close()

    rc, out, err = asyncio.run(main())
    assert rc == 2
    assert "is in use by another program" in err and "energy-agent" in err
    assert out == ""


def test_scan_counts_meters_that_refuse_every_probe(tmp_path: Path) -> None:
    """Two meters whose map matches no shipped profile answer every probe with exception 2;
    a third address is silent. Both meters are found (with how they answered), not the third."""
    points = profile_meter("x", 1, "chint-dtsu666").points
    refusing = Switch(ExcCodes.ILLEGAL_ADDRESS)
    devices = [device_for(4, points, action=refusing), device_for(9, points, action=refusing)]

    async def main() -> tuple[int, str, str]:
        async with rtu_line(devices, default="silent") as line:
            line.relay.set_fault(4, "pass")
            line.relay.set_fault(9, "pass")
            cfg = str(write_config(tmp_path, line.agent_port))
            return await energy_agent("scan", "rs485-1", "-c", cfg, "--units", "4,6,9",
                                      "--timeout", "0.1")

    rc, out, err = asyncio.run(main())
    assert rc == 0, err
    table = rows(out)
    assert sorted(table) == [4, 9], out
    assert table[4][2] == "(unknown)"
    assert "exception 2 (illegal data address)" in table[4][3]
    assert "2 device(s) found" in out
    assert refusing.calls >= 2


def test_a_port_refusing_a_setting_is_one_line_for_scan_probe_and_run(tmp_path: Path) -> None:
    """A pty refuses even parity (termios.error, not an OSError), as some USB adapters do."""
    with serial_pair() as (port, _other):
        cfg = write_config(tmp_path, port)
        cfg.write_text(cfg.read_text().replace('parity = "N"', 'parity = "E"') + """
[[meter]]
name = "m1"
bus = "rs485-1"
unit = 1
[[meter.point]]
name = "voltage_a"
register = 0
""")
        scan = asyncio.run(energy_agent("scan", "rs485-1", "-c", str(cfg), "--units", "1-3"))
        probe = asyncio.run(energy_agent("probe", "m1", "-c", str(cfg)))
        for rc, out, err in (scan, probe):
            assert rc != 0
            lines = [line for line in (out + err).splitlines() if line.strip()]
            refused = [line for line in lines if "refuses the serial setting 9600 8E1" in line]
            assert len(refused) == 1, lines
            assert port in refused[0] and "try parity N" in refused[0]
            assert "Traceback" not in out + err

        # run: the poller records gaps and logs the bus's fault once, however many cycles.
        from agent.config import load_config
        from agent.runtime.poller import BusPoller
        from drivers.base import Quality
        from drivers.modbus_rtu import ModbusRtuDriver

        loaded = load_config(cfg)
        bus = loaded.bus_named("rs485-1")
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("agent").addHandler(handler)

        async def sink(readings: object, statuses: object) -> None:
            pass

        async def cycles() -> list[set[Quality]]:
            driver = ModbusRtuDriver(bus)
            poller = BusPoller(bus, loaded.meter, driver, sink)
            try:
                return [{r.quality for m in await poller.poll_once() for r in m} for _ in range(5)]
            finally:
                await driver.close()

        try:
            seen = asyncio.run(cycles())
        finally:
            logging.getLogger("agent").removeHandler(handler)
        # Failed cycles, then offline (probed once per cooldown): gaps throughout.
        assert seen == [{Quality.TIMEOUT}] * 3 + [{Quality.OFFLINE}] * 2
        lines = [r.getMessage() for r in records if r.levelno >= logging.INFO]
        assert len(lines) == 1 and "refuses the serial setting" in lines[0], lines
        assert not any(r.exc_info for r in records)


def test_unit_lists_and_plausibility() -> None:
    assert parse_units("1-3,17") == [1, 2, 3, 17]
    assert parse_units("5") == [5]
    for bad in ("0-3", "1-248", "x", "5-3"):
        with pytest.raises(ValueError):
            parse_units(bad)
    assert plausible("voltage_a", 230.0) and not plausible("voltage_a", 3.0)
    assert plausible("frequency", 50.0) and not plausible("frequency", 230.0)
    assert plausible("import_active_energy", 0.0) and not plausible("import_active_energy", -1.0)
    assert not plausible("current_a", float("nan"))
