"""Clock sanity: nothing is sealed while the wall clock is implausible; steps are detected."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.protocol.sealer import BUILD_DATE_MS, ClockImplausible, Sealer
from agent.protocol.signing import load_signer
from agent.runtime.clock import ClockWatch
from buffer.store import Store
from drivers.base import Reading
from tests.agent_harness import write_site


class Clock:
    def __init__(self, wall: float, mono: float = 1000.0) -> None:
        self.wall_s, self.mono_s = wall, mono

    def wall(self) -> float:
        return self.wall_s

    def mono(self) -> float:
        return self.mono_s

    def advance(self, s: float, step: float = 0.0) -> None:
        self.mono_s += s
        self.wall_s += s + step


def test_steps_are_detected_both_ways_and_slewing_is_not() -> None:
    c = Clock(1_800_000_000.0)
    w = ClockWatch(c.wall, c.mono)
    c.advance(60, step=0.3)  # NTP slewing-sized drift
    assert w.check() is None
    c.advance(60, step=-3600)
    assert w.check() == pytest.approx(-3600)
    c.advance(60, step=+45)
    assert w.check() == pytest.approx(45)
    c.advance(60)
    assert w.check() is None
    assert w.steps == 2


def sealer_at(tmp_path: Path, now_s: float) -> tuple[Sealer, Store]:
    cfg = load_config(write_site(tmp_path, 1883, 502))
    store = Store(tmp_path / "agent.db")
    return Sealer(cfg, store, load_signer(cfg.signing.key_file), clock=lambda: now_s), store


def test_a_clock_before_the_build_date_pauses_sealing(tmp_path: Path) -> None:
    sealer, store = sealer_at(tmp_path, 86400.0)  # a gateway that booted in 1970
    store.readings.add_readings([Reading("main", "voltage_a", 86_400_000, 230.1)])
    with pytest.raises(ClockImplausible, match="before this build"):
        sealer.seal_readings()
    assert store.outbox.chain_head()[0] == 1  # nothing sealed; the reading is still stored
    assert len(store.readings.readings_after(0, 10)) == 1


def test_a_clock_far_behind_the_newest_sample_pauses_sealing(tmp_path: Path) -> None:
    now = BUILD_DATE_MS / 1000 + 30 * 86400
    sealer, store = sealer_at(tmp_path, now)
    store.readings.add_readings([Reading("main", "voltage_a", int((now + 3600) * 1000), 230.1)])
    with pytest.raises(ClockImplausible, match="behind the newest stored sample"):
        sealer.seal_readings()
    sealer.clock = lambda: now + 3600
    assert sealer.seal_readings() == 1
    assert store.outbox.chain_head()[0] == 2
