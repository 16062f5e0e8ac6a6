"""The HIL observer reads every committed sample out of the agent's poll rows, read-only and
incrementally, with the row id each sample was committed under."""

from __future__ import annotations

from pathlib import Path

from buffer.store import Store
from drivers.base import Quality, Reading
from hil.observer import Observer

T0 = 1_800_000_000_000


class NoPlatform:
    def sample_count(self) -> int:
        return 0


def test_observer_sees_every_sample_with_its_row_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    obs = Observer(tmp_path / "agent.db", NoPlatform())  # type: ignore[arg-type]
    store.readings.add_readings([Reading("a", "x", T0, 1.0), Reading("a", "y", T0 + 40, None, Quality.TIMEOUT),
                        Reading("b", "x", T0 + 2, 2.0)])
    obs.poll()
    store.readings.add_readings([Reading("a", "x", T0 + 1000, 1.0), Reading("a", "y", T0 + 1000, 3.0),
                        Reading("c", "z", T0 + 1001, 4.0)])  # a layout the observer has not seen yet
    obs.poll()
    assert obs.committed == {("a", "x", T0): 0, ("a", "y", T0 + 40): 1, ("b", "x", T0 + 2): 0,
                             ("a", "x", T0 + 1000): 0, ("a", "y", T0 + 1000): 0, ("c", "z", T0 + 1001): 0}
    assert obs.rowid == {("a", "x", T0): 1, ("a", "y", T0 + 40): 1, ("b", "x", T0 + 2): 2,
                         ("a", "x", T0 + 1000): 3, ("a", "y", T0 + 1000): 3, ("c", "z", T0 + 1001): 4}
    assert obs.timeline[-1][1] == 6
    store.close()
