"""`energy-agent demo`: the whole chain on this machine, watched live.

Simulated meters (one Modbus TCP, two on a simulated 9600-baud RS-485 line), a local
Mosquitto, the platform simulator and the real agent as a subprocess. The live view shows
each point's newest value as the platform received it and whether it matches what the
simulated meter really showed; without a terminal (CI, no stdin) it prints plain lines.
Needs `mosquitto` and `socat` installed; uses the HIL rig in hil/.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    parser.add_argument("--workdir", help="keep the generated config, logs and databases here")


def demo_scenario(seconds: float) -> Any:
    from hil.scenario import Scenario

    return Scenario(
        name="demo",
        description="three simulated meters, local broker, platform simulator, the agent",
        duration=seconds,
        config={"schedule": {"poll_interval": 1.0, "seal_interval": 2.0}},
        lines=[{"name": "rs485-1", "baud": 9600, "line_rate": True}],
        meters=[
            {"name": "main-incomer", "bus": "tcp", "unit": 1, "profile": "eastron-sdm630"},
            {"name": "workshop-a", "bus": "rs485-1", "unit": 1, "profile": "chint-dtsu666"},
            {"name": "compressor", "bus": "rs485-1", "unit": 2, "profile": "acrel-dtsd1352"},
        ],
        events=[],
        kill_loop=None,
        expect={"min_coverage": 0.5},
        drain_timeout=30.0,
    )


def meter_lines(rig: Any, most: int = 4) -> list[str]:
    """Per meter, as the platform received it: the energy counted so far (kWh, from the first
    to the newest import reading) and its newest values with units."""
    with rig.platform._lock:
        rows = rig.platform.db.execute(
            "SELECT meter, point, min(ts), max(ts) FROM sample WHERE quality = 0"
            " GROUP BY meter, point ORDER BY meter, point").fetchall()
        first_last = {}
        for meter, point, t0, t1 in rows:
            (v0,), (v1,) = (rig.platform.db.execute(
                "SELECT value FROM sample WHERE meter = ? AND point = ? AND ts = ? AND quality = 0"
                " LIMIT 1", (meter, point, t)).fetchone() for t in (t0, t1))
            first_last[(meter, point)] = (v0, v1)
    lines = []
    for name in sorted({m for m, _ in first_last}):
        sim = rig.meters.get(name)
        energy, shown = None, []
        for (meter, point), (v0, v1) in first_last.items():
            if meter != name:
                continue
            model = sim.models.get(point) if sim is not None else None
            unit = model.point.unit if model is not None else ""
            if point == "import_active_energy" and unit == "kWh":
                energy = float(v1) - float(v0)
            shown.append((point, f"{v1} {unit}".strip()))
        shown.sort(key=lambda pv: (pv[0] != "import_active_energy", pv[0]))
        counted = "—" if energy is None else f"{energy:.2f} kWh"
        values = ", ".join(f"{p} {v}" for p, v in shown[:most])
        lines.append(f"{name}: energy counted so far {counted}; newest {values}")
    return lines


class View:
    """Newest value per point at the platform, checked against the simulated meter."""

    def __init__(self, live: bool, seconds: float) -> None:
        self.live, self.seconds = live, seconds
        self.started = time.monotonic()
        self.last_line = 0.0
        self._live: Any = None
        self.summary: list[str] = []  # the per-meter lines of the latest tick

    def tick(self, rig: Any) -> None:
        with rig.platform._lock:
            rows = rig.platform.db.execute(
                "SELECT meter, point, ts, value, quality FROM sample WHERE rowid IN "
                "(SELECT max(rowid) FROM sample GROUP BY meter, point) ORDER BY meter, point"
            ).fetchall()
        c, obs = rig.platform.counters, rig.observer
        committed, received = len(obs.committed), rig.platform.sample_count()
        elapsed = time.monotonic() - self.started
        if not self.live:
            if elapsed - self.last_line >= 5 or not self.last_line:
                self.last_line = elapsed
                self.summary = meter_lines(rig)
                print(f"t={elapsed:4.0f}s  committed {committed}  at platform {received}  "
                      f"envelopes accepted {c.accepted}, rejected {c.rejected}  "
                      f"outbox pending {max(obs.outbox_pending, 0)}", flush=True)
                for line in self.summary:
                    print(f"        {line}", flush=True)
            return
        if elapsed - self.last_line >= 1 or not self.last_line:
            self.last_line = elapsed
            self.summary = meter_lines(rig)
        self._render(rig, rows, committed, received, elapsed)

    def _render(self, rig: Any, rows: list[Any], committed: int, received: int,
                elapsed: float) -> None:
        from rich.live import Live
        from rich.table import Table

        c = rig.platform.counters
        table = Table(title=f"energy-agent demo — {elapsed:.0f}/{self.seconds:.0f} s   "
                      f"committed {committed}, at platform {received}, envelopes "
                      f"{c.accepted} accepted / {c.rejected} rejected / {c.duplicates} dup")
        for col in ("meter", "point", "value", "unit", "age", "true?"):
            table.add_column(col, justify="right" if col in ("value", "age") else "left")
        now = time.time() * 1000
        for meter, point, ts, value, quality in rows:
            sim = rig.meters.get(meter)
            unit = sim.models[point].point.unit if sim and point in sim.models else ""
            ok = quality == 0 and sim is not None and sim.matches(point, ts, value)
            table.add_row(meter, point, value or f"gap q={quality}", unit,
                          f"{(now - ts) / 1000:.1f} s", "[green]✓" if ok else "[red]✗")
        from rich.console import Group

        shown = Group(table, *self.summary)
        if self._live is None:
            self._live = Live(shown, refresh_per_second=4, transient=False)
            self._live.start()
        else:
            self._live.update(shown)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hil.scenario import run_scenario

    logging.getLogger().setLevel(logging.WARNING)  # the view is the output, not rig logs
    live = sys.stdout.isatty() and not args.plain
    view = View(live, args.seconds)
    work = Path(args.workdir) if args.workdir else None
    if work:
        work.mkdir(parents=True, exist_ok=True)
    print(f"demo: starting broker, platform simulator, 3 simulated meters and the agent "
          f"for {args.seconds:g} s …", flush=True)
    try:
        report = asyncio.run(run_scenario(demo_scenario(args.seconds), work, on_tick=view.tick))
    finally:
        view.close()
    print(report.text())
    if view.summary:
        print("per meter, at the platform:")
        for line in view.summary:
            print(f"  {line}")
    return 0 if report.lost == 0 and report.wrong == 0 and report.chain.get("intact") else 1
