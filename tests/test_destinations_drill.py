"""Two destinations in simulated time (hil/destinations_drill.py): a real Mosquitto and the
provincial HTTPS simulator, fed by the agent's Reporter, Sealer, store and one Forwarder each.

Each scenario crosses midnight and a month end, so interval, daily and monthly values are all
sealed; an outage lasts an hour of simulated time. The short versions run in CI (~10 s each),
the full ones are marked slow.
"""

from __future__ import annotations

import asyncio
from functools import cache
from pathlib import Path

import pytest

from hil.destinations_drill import Drill, DrillReport, run_drill

SCENARIOS = Path(__file__).resolve().parent.parent / "hil" / "scenarios" / "destinations"
NAMES = sorted(p.stem for p in SCENARIOS.glob("*.toml"))
# Sealed to acknowledged, for a destination that is up while the other is down: it must not
# wait for the other (a real coupling would show the outage's length, seconds here).
UNDELAYED_S = 1.0


@cache
def _run(name: str, short: bool, work: Path) -> DrillReport:
    return asyncio.run(run_drill(Drill.load(SCENARIOS / f"{name}.toml", short=short), work))


def _check(report: DrillReport) -> None:
    print(report.text())
    assert report.drained, report.text()
    assert set(report.envelopes) >= {"interval", "daily", "monthly"}, report.text()
    for name, r in report.results.items():
        assert r.expected > 0
        # Every interval, daily and monthly value exactly once, as the sealed envelopes hold it.
        assert not r.missing and not r.wrong, f"{name}: {r.missing[:5]} {r.wrong[:5]}"
        assert r.received == r.expected and r.duplicates == 0, report.text()
        assert r.max_delay_other_down <= UNDELAYED_S, f"{name} waited for the other: {report.text()}"
    assert report.counters["refused"] == 0 and report.counters["pin_failures"] == 0


def test_scenario_files() -> None:
    assert {"province-down", "province-slow", "mqtt-down", "both-down", "token-expiry-drain"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_short_drill(name: str, tmp_path: Path) -> None:
    report = _run(name, True, tmp_path)
    _check(report)
    if name in ("province-down", "province-slow", "mqtt-down"):
        # The destination that stayed up delivered while the other was down (or slow): measured.
        up = "province" if name == "mqtt-down" else "mqtt"
        assert report.results[up].delays_other_down, report.text()
    if name == "token-expiry-drain":
        # Tokens died between envelopes and between the two posts of one envelope; each was
        # renewed (a new PIN-block login), and still nothing was posted twice.
        assert report.counters["token_refusals"] >= 3 and report.counters["tokens"] >= 4
        assert report.counters["duplicates"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_drill(name: str, tmp_path: Path) -> None:
    _check(_run(name, False, tmp_path))
