"""Conditions logged when they start, hourly while they last and when they end; the shared
jittered back-off."""

from __future__ import annotations

import logging

import pytest

from agent.runtime.backoff import Backoff
from agent.runtime.conditions import Conditions, Overruns


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_overrunning_bus_is_one_condition(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    overruns = Overruns(Conditions(logging.getLogger("t"), clock=clock), poll_interval=1.0)
    caplog.set_level(logging.INFO, logger="t")
    # Every other tick skipped for two hours: one line, then one summary an hour.
    for tick in range(7300):
        clock.now += 1
        if tick % 2:
            overruns.skipped("rs485-1")
        else:
            overruns.on_time("rs485-1")
    lines = caplog.messages
    assert len(lines) == 3, lines
    assert "bus rs485-1: poll cycles skipped" in lines[0]
    assert "still overrunning" in lines[1] and "1800 more time(s) in the last 60 min" in lines[1]
    # On time again: over after ten ticks in a row, with how long it lasted.
    for _ in range(10):
        clock.now += 1
        overruns.on_time("rs485-1")
    assert len(caplog.messages) == 4
    assert caplog.messages[-1].startswith("bus rs485-1: cycles on time again (after 2 h 1 min, 3650 ")


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    low = Backoff(1.0, 10.0, rand=lambda: 0.0)
    high = Backoff(1.0, 10.0, rand=lambda: 0.999999)
    assert [round(low.next(), 2) for _ in range(7)] == [0.5, 1, 2, 4, 5, 5, 5]
    assert [round(high.next(), 2) for _ in range(7)] == [1, 2, 4, 8, 10, 10, 10]
    assert low.at_cap and low.failures == 7
    low.reset()
    assert low.step == 1.0 and not low.at_cap
    real = Backoff(0.5, 10.0)
    delays = [real.next() for _ in range(200)]
    assert all(0.25 <= d <= 10.0 for d in delays)
    assert len({round(d, 3) for d in delays[10:]}) > 100  # jittered, not a fixed cadence
