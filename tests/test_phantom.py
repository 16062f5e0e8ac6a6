"""No phantom days: a single near-zero read is a bad read unless confirmed, and a long outage on
a small counter counts the wraps its elapsed time and rate imply."""

from __future__ import annotations

import itertools
from datetime import date
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting import counters
from agent.accounting.counters import Rates, Sample, close_periods
from agent.accounting.reports import Reporter
from agent.config import load_config
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from buffer.store import Store
from drivers.base import Quality, Reading
from tests.test_reports import CONFIG, ms

D = Decimal
MIN = 60_000
DAY = 86_400_000


def test_a_720_kwh_day_with_one_zero_read_stays_720(tmp_path: Path):
    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path))
    cfg = load_config(tmp_path / "agent.toml")
    generate_key(cfg.signing.key_file)
    store = Store(tmp_path / "agent.db")
    try:
        # 0.5 kWh a minute from 90 329.50 kWh: 720 kWh on 21 Nov. At 13:00 a converter answers
        # zeros once; taken as a reset, the next read counted 90 xxx kWh from zero (91 049.50).
        t, v, rows = ms("2026-11-20T23:50"), 90_324.50, []
        while t < ms("2026-11-22T00:10"):
            value = 0.0 if t == ms("2026-11-21T13:00") else round(v, 2)
            rows.append(Reading("main", "kwh", t + 150, value, Quality.GOOD))
            t, v = t + MIN, v + 0.5
        store.readings.add_readings(rows)
        sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file),
                        clock=lambda: ms("2026-11-22T01:00") / 1000)
        rep = Reporter(cfg, store, sealer)
        body = rep.day_body(date(2026, 11, 21), ms("2026-11-22T01:00"))
        (item,) = [i for i in body["items"] if i["kind"] == "counter"]
        assert item["value"] == "720.00" and "bad_read" in item["flags"]
        assert "reset" not in item["flags"]
        assert body["total_tce"] == "0.0885"  # 720 × 0.1229 = 88.488 kgce, not 11.19 tce
        # The sealed intervals agree: the 13:00 interval is 7.50 kWh, not a phantom.
        rep.seal_due(ms("2026-11-22T01:00"))
        import json
        iv = {r.period: json.loads(r.payload)["body"] for r in store.outbox.envelopes("interval")}
        (i13,) = [i for i in iv["2026-11-21T13:00"]["items"] if i["kind"] == "counter"]
        assert i13["value"] == "7.50"
    finally:
        store.close()


def test_a_confirmed_reset_still_counts_from_zero():
    # 8 000 → 0.4 → 3.0 → 5.0: the reads after the drop stay low and rise: a real reset.
    s = [Sample(0, D("8000.0")), Sample(MIN, D("0.4")), Sample(2 * MIN, D("3.0")),
         Sample(3 * MIN, D("5.0"))]
    (pv,) = close_periods([0, 3 * MIN], s, decimals=1)
    assert pv.consumption == D("5.0") and counters.RESET in pv.flags


@st.composite
def day_with_one_low_read(draw):
    per_min = D(draw(st.integers(1, 10_000))) / 100  # 0.01–100 kWh a minute
    start = D(draw(st.integers(10_000, 10**8))) / 100
    offset = draw(st.integers(-30, 30)) * 1000  # reads not on the minute
    times = [offset + i * MIN for i in range(-5, 24 * 60 + 6)]
    samples = [Sample(t, start + per_min * i) for i, t in enumerate(times)]
    k = draw(st.integers(1, len(samples) - 2))
    low = D(draw(st.integers(0, 100))) / 100 * samples[k - 1].value * counters.RESET_FRACTION
    low = low.quantize(D("0.01"))
    bad = [*samples[:k], Sample(samples[k].ts, low), *samples[k + 1:]]
    cuts = [0, *sorted(set(draw(st.lists(st.integers(1, DAY - 1), max_size=3)))), DAY]
    return samples, bad, per_min, cuts


@settings(max_examples=300, deadline=None)
@given(day_with_one_low_read())
def test_one_near_zero_read_moves_a_day_by_no_more_than_the_rate_allows(h):
    good, bad, per_min, cuts = h
    rate = Rates(maximum=per_min * 2 / MIN)
    clean = close_periods([0, DAY], good, decimals=2, rates=rate)[0].consumption
    (once,) = close_periods([0, DAY], bad, decimals=2, rates=rate)
    # The low read's neighbours are two minutes apart: the day may lose at most what the meter
    # can do in them (here it loses nothing: the read is dropped).
    assert abs(once.consumption - clean) <= rate.maximum * 2 * MIN
    assert once.consumption == clean
    # Cut anywhere and chained from the closing values, the day adds up as without the low
    # read. (Against the one pass it may differ by the rounding of a seed between two reads,
    # low read or not.)
    def chained(samples: list[Sample]) -> D:
        seed, total = None, D(0)
        for s, e in itertools.pairwise(cuts):
            (pv,) = close_periods([s, e], samples, decimals=2, seed=seed, rates=rate)
            total, seed = total + pv.consumption, pv.end_value
        return total

    assert chained(bad) == chained(good)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200), st.integers(0, 65_535), st.integers(1, 12), st.integers(0, 65_535))
def test_16_bit_counter_across_an_outage_of_k_wraps_is_counted_exactly(per_min, start, k, extra):
    m = D(65_536)
    # Reads every minute for an hour, then silence long enough for k wraps and `extra` more.
    consumed = k * 65_536 + extra
    outage_min = -(-consumed // per_min)  # minutes the meter needs for that at per_min
    consumed = outage_min * per_min
    before = [Sample(i * MIN, D((start + i * per_min) % 65_536)) for i in range(61)]
    last = before[-1]
    after_ts = last.ts + outage_min * MIN
    after = [Sample(after_ts, (last.value + consumed) % m),
             Sample(after_ts + MIN, (last.value + consumed + per_min) % m)]
    # The expected rate is the counter's own history (its last day), the maximum twice that.
    rates = Rates(expected=D(per_min) / MIN, maximum=D(2 * per_min) / MIN)
    (pv,) = close_periods([last.ts, after_ts], before + after, decimals=0, modulus=m, rates=rates)
    assert pv.consumption == consumed
    assert k < 1 or counters.BACKWARDS not in pv.flags
