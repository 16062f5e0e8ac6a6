"""`energy-agent demo` shows energy, not only integrity figures: per meter the energy counted
so far (kWh) and the newest values with their units, live and in the summary."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.agent_harness import REPO


def test_demo_summary_names_energy_and_units() -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "demo", "--seconds", "8", "--plain"],
                       capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = r.stdout.split("per meter, at the platform:")[1]
    meters = dict(re.findall(r"^  ([\w-]+): energy counted so far ([\d.]+) kWh", summary, re.M))
    assert sorted(meters) == ["compressor", "main-incomer", "workshop-a"], r.stdout
    assert all(float(kwh) > 0 for kwh in meters.values())
    assert re.search(r"import_active_energy [\d.]+ kWh, active_power [\d.]+ kW", summary)
    # The live lines (plain: every 5 s) carry the same per-meter figures.
    assert "RESULT: PASS" in r.stdout and r.stdout.count("energy counted so far") > 3
