"""`--json` on the commissioning commands, and a closed pipe: what scripts and shells see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.agent_harness import REPO, CountingMeter, write_site
from tests.example_config import example_text, key_material


def agent(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *argv], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_check_config_json_has_the_read_plans(tmp_path: Path) -> None:
    # The example as shipped, its key and certificate paths pointed at real files: check-config
    # loads them as the daemon will.
    cfg = tmp_path / "agent.toml"
    cfg.write_text(example_text(key_material(tmp_path), str(tmp_path / "data")), encoding="utf-8")
    r = agent("check-config", "--json", str(cfg))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    lan = next(b for b in doc["buses"] if b["bus"] == "lan")
    assert lan["meters"][0]["requests"] == ["holding 0..11 (12 registers, 2 points)"]
    assert doc["ok"] is True and doc["warnings"] == []


def test_probe_json_reads_the_meter(tmp_path: Path) -> None:
    with CountingMeter() as meter:
        cfg = write_site(tmp_path, 1883, meter.port)
        r = agent("probe", "main", "-c", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    values = {p["point"]: (p["value"], p["unit"], p["quality"]) for p in doc["points"]}
    assert values["voltage_a"] == ("230.1", "V", "good")
    assert values["active_power"] == ("12.500", "kW", "good")
    assert doc["requests"] == ["holding 0..20 (21 registers, 3 points)"]


def test_probe_json_says_why_nothing_was_read(tmp_path: Path) -> None:
    cfg = write_site(tmp_path, 1883, 9)  # nothing listens on the discard port
    r = agent("probe", "main", "-c", str(cfg), "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert "cannot connect to 127.0.0.1:9" in doc["error"] and doc["points"] == []


def test_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    # Output well past a pipe's 64 KiB buffer, so the reader is gone while we still write.
    cfg = write_site(tmp_path, 1883, 502)
    extra = []
    for b in range(8):
        extra.append(f'[[bus]]\nname = "b{b}"\nkind = "modbus-tcp"\nhost = "127.0.0.1"\n')
        for u in range(1, 201):
            extra.append(f'[[meter]]\nname = "m{b}-{u}"\nbus = "b{b}"\nunit = {u}\n'
                         '[[meter.point]]\nname = "v"\nregister = 0\n')
    cfg.write_text(cfg.read_text() + "\n".join(extra))
    cmd = f"{sys.executable} -m agent check-config {cfg} | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.stdout.endswith(": OK\n")
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
