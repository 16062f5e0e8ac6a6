"""Calendars, completeness and months as the exact sum of their days."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting import statistics
from agent.accounting.coal import coefficients
from agent.accounting.statistics import Item, completeness_of, item_dict, month_body

TZ = ZoneInfo("Asia/Shanghai")
ELEC = Item("main", "kwh", "00-00-0000-020201-10", "electricity", "kWh", "counter", 2, None)
GAS = Item("gas", "m3", "00-00-0000-010103-10", "natural_gas", "m3", "counter", 1, None)


def test_day_and_interval_boundaries_are_local_midnight_and_labelled_by_start():
    d = date(2026, 11, 21)
    start = statistics.day_start_ms(d, TZ)
    assert statistics.rfc3339(start, TZ) == "2026-11-21T00:00:00+08:00"
    b = statistics.interval_bounds(d, TZ, 15)
    assert len(b) == 97 and b[0] == start and b[-1] - b[0] == 86_400_000
    assert statistics.interval_label(b[41], TZ) == "2026-11-21T10:15"
    assert len(statistics.interval_bounds(d, TZ, 60)) == 25
    assert statistics.seal_at_ms(d, TZ, "00:05") == b[-1] + 5 * 60_000
    assert statistics.month_days("2028-02")[-1] == date(2028, 2, 29)


def test_completeness_counts_poll_slots_and_intervals():
    d = date(2026, 11, 21)
    grid = statistics.interval_bounds(d, TZ, 15)
    start = grid[0]
    # Polled every 60 s, but the meter was silent from 06:00 to 09:00 (180 of 1440 slots), and
    # one slot was read twice (a retry): it still counts once.
    ts = [start + i * 60_000 + 200 for i in range(1440) if not 360 <= i < 540]
    ts.append(start + 200 + 5)
    c = completeness_of(ts, grid, 60.0)
    assert (c.samples, c.samples_expected) == (1260, 1440)
    assert (c.intervals, c.intervals_expected) == (84, 96)
    assert c.ratio == Decimal("0.8750")  # min(1260/1440, 84/96) = 0.875
    # Status asks about today at 12:00: only the elapsed half is expected.
    half = completeness_of(ts, grid, 60.0, until_ms=start + 12 * 3_600_000)
    assert half.samples_expected == 720 and half.intervals_expected == 48


def _day(day: date, values: dict[Item, str | None]) -> dict:
    start = statistics.rfc3339(statistics.day_start_ms(day, TZ), TZ)
    items = [item_dict(it, 1, start, None if v is None else Decimal(v), []) for it, v in
             values.items()]
    body = {"period": day.isoformat(), "items": items}
    body.update(statistics.energy_summary(items, coefficients()))
    return body


cents = st.integers(0, 10**9).map(lambda n: f"{Decimal(n) / 100:f}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(cents, st.one_of(st.none(), cents)), min_size=30, max_size=30))
def test_month_is_exactly_the_sum_of_its_days(days):
    month = "2026-11"
    bodies = [_day(d, {ELEC: e, GAS: g}) for d, (e, g) in
              zip(statistics.month_days(month), days, strict=True)]
    m = month_body(month, TZ, bodies, coefficients())
    elec, gas = (i for i in m["items"] if i["kind"] == "counter")
    assert Decimal(elec["value"]) == sum(Decimal(e) for e, _ in days)
    gas_values = [Decimal(g) for _, g in days if g is not None]
    if gas_values:
        assert Decimal(gas["value"]) == sum(gas_values)
    else:
        assert gas["value"] == ""
    assert ("incomplete" in gas["flags"]) == (len(gas_values) < 30)
    assert elec["statType"] == 2 and elec["periodStart"] == "2026-11-01T00:00:00+08:00"
    # The month converts its own quantities (the exact sums of the days'), so its tce is the
    # month's value × coefficient, and differs from the sum of the days' tce by their rounding
    # alone: at most 0.00005 tce per day.
    c = coefficients()
    assert Decimal(m["tce"]["electricity"]) == c.tce("electricity", "kWh", Decimal(elec["value"]))
    for variety in m["tce"]:
        days_sum = sum(Decimal(b["tce"].get(variety, "0")) for b in bodies)
        assert abs(Decimal(m["tce"][variety]) - days_sum) <= Decimal("0.00005") * 30
    days_total = sum(Decimal(b["total_tce"]) for b in bodies)
    assert abs(Decimal(m["total_tce"]) - days_total) <= Decimal("0.0001") * 30
    assert (m["total_status"] == "incomplete") == (len(gas_values) < 30)
    assert m["electricity_convention"] == "equivalent"


def test_wire_items_hold_only_strings_and_integers():
    it = item_dict(ELEC, 1, "2026-11-21T00:00:00+08:00", Decimal("1.50"), ["gap"],
                   samples=3, completeness=Decimal("0.9000"), startValue=None)
    assert it["value"] == "1.50" and it["completeness"] == "0.9000" and it["startValue"] == ""
    assert all(isinstance(v, (str, int, list)) for v in it.values())
