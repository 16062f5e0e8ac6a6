"""check-config, probe and scan on DL/T 645 and CJ/T 188 buses, as an integrator runs them:
the real CLI in a subprocess against simulated meters on a pty pair."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from agent.protocol.signing import generate_key
from hil.serial_pair import serial_pair
from hil.sim_di import DiLine, di_meter

ROOT = Path(__file__).resolve().parent.parent
HEAD = """[agent]
gateway = "gw1"
enterprise = "91370600780790663W"
data_dir = "{d}/data"

[platform]
host = "127.0.0.1"

[signing]
key_file = "{d}/key"
"""


async def cli(*args: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def write_config(tmp: Path, body: str) -> str:
    if not (tmp / "key").exists():  # check-config loads the signing key, as run does
        generate_key(tmp / "key")
    path = tmp / "agent.toml"
    path.write_text(HEAD.format(d=tmp) + body, encoding="utf-8")
    return str(path)


def test_dlt645_check_config_probe_and_scan(tmp_path: Path) -> None:
    async def go() -> None:
        sim = di_meter("incomer", "123456789012", "dlt645", profile="chint-dtsu666-dlt645")
        with serial_pair() as (meter_side, agent_side):
            line = await DiLine(meter_side, [sim], "dlt645").start()
            try:
                cfg = write_config(tmp_path, f"""
[[bus]]
name = "dlt-1"
kind = "dlt645"
device = "{agent_side}"
baud = 2400
parity = "N"
timeout = 0.3

[[meter]]
name = "incomer"
bus = "dlt-1"
address = "123456789012"
profile = "chint-dtsu666-dlt645"
""")
                rc, out = await cli("check-config", cfg)
                assert rc == 0, out
                assert "meter incomer address 123456789012 profile chint-dtsu666-dlt645: 24 point(s) in " \
                       "24 request(s)" in out, out
                assert "DI 00010000 (4 data bytes, 1 point)" in out
                assert "bus time per cycle" in out
                rc, out = await cli("probe", "-c", cfg, "incomer")
                assert rc == 0, out
                assert "import_active_energy" in out and "DI 00010000 XXXXXX.XX" in out
                assert "—" not in out, out  # every point answered
                rc, out = await cli("scan", "-c", cfg, "dlt-1")
                assert rc == 0, out
                assert "address 123456789012" in out
                assert "chint-dtsu666-dlt645" in out.split("candidates:")[1].splitlines()[0]
            finally:
                await line.stop()
    asyncio.run(go())


def test_cjt188_probe_and_config_mistakes(tmp_path: Path) -> None:
    async def go() -> None:
        sim = di_meter("heat", "12345678901234", "cjt188", profile="huizhong-crl-heat-cjt188")
        with serial_pair() as (meter_side, agent_side):
            line = await DiLine(meter_side, [sim], "cjt188").start()
            try:
                bus = f"""
[[bus]]
name = "mbus-1"
kind = "cjt188"
device = "{agent_side}"
parity = "N"
timeout = 0.3
"""
                cfg = write_config(tmp_path, bus + """
[[meter]]
name = "heat"
bus = "mbus-1"
address = "12345678901234"
profile = "huizhong-crl-heat-cjt188"
""")
                rc, out = await cli("probe", "-c", cfg, "heat")
                assert rc == 0, out
                assert "heat_energy" in out and "kWh" in out and "—" not in out, out
                rc, out = await cli("scan", "-c", cfg, "mbus-1")
                assert rc == 0 and "address 12345678901234 (type 20h)" in out, out
                # Mistakes: a Modbus profile on a CJ/T 188 line, a missing address, a register.
                cfg = write_config(tmp_path, bus + """
[[meter]]
name = "a"
bus = "mbus-1"
profile = "chint-dtsu666"

[[meter]]
name = "b"
bus = "mbus-1"
address = "1"
frame = { meter_type = "10" }
[[meter.point]]
name = "volume"
register = 3
""")
                rc, out = await cli("check-config", cfg)
                assert rc == 78, out
                lines = [x for x in out.splitlines() if x.startswith("error:")]
                assert any("meter[0].address: required on a cjt188 bus" in x for x in lines), out
                assert any("speaks modbus, but bus 'mbus-1' carries cjt188" in x for x in lines), out
                assert any("meter[1].point.volume: required for a cjt188 point" in x for x in lines), out
            finally:
                await line.stop()
    asyncio.run(go())


def test_scan_on_a_two_meter_line_needs_the_address(tmp_path: Path) -> None:
    async def go() -> None:
        a = di_meter("a", "000000000001", "dlt645", profile="acrel-dtsd1352-dlt645")
        b = di_meter("b", "000000000002", "dlt645", profile="acrel-dtsd1352-dlt645")
        with serial_pair() as (meter_side, agent_side):
            line = await DiLine(meter_side, [a, b], "dlt645").start()
            try:
                cfg = write_config(tmp_path, f"""
[[bus]]
name = "dlt-1"
kind = "dlt645"
device = "{agent_side}"
parity = "N"
timeout = 0.3
""")
                rc, out = await cli("scan", "-c", cfg, "dlt-1")
                assert rc == 1 and "more than one meter answered" in out, out
                rc, out = await cli("scan", "-c", cfg, "dlt-1", "--address", "2")
                assert rc == 0 and "address 2 " in out and "acrel-dtsd1352-dlt645" in out, out
                rc, out = await cli("scan", "-c", cfg, "dlt-1", "--address", "7")
                assert rc == 1, out  # nobody there
                rc, out = await cli("scan", "-c", cfg, "dlt-1", "--profiles", "chint-dtsu666")
                assert rc == 2 and "do(es) not speak dlt645" in out, out
            finally:
                await line.stop()
    asyncio.run(go())
