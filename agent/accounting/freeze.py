"""Closing a day from the meter's own daily-freeze register (DL/T 645 05060101: forward active
energy at the last daily freeze), where its profile declares one (`freeze_of`).

The meter froze its counter at 00:00 by its own clock; the agent reads that register like any
point, some polls after midnight. The first read at least FREEZE_SETTLE_MS after the boundary is
taken (before that a meter whose clock lags may still show yesterday's freeze), and only if it
lies between the counter reads either side of the boundary, forward along the counter: a value
outside them is a stale or foreign freeze, and the day is interpolated as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from agent.accounting import counters
from agent.accounting.counters import Sample
from drivers.base import Quality, Reading

FREEZE_SETTLE_MS = 5 * 60_000


def freeze_sample(freeze_reads: Sequence[Reading], samples: Sequence[Sample], boundary_ms: int,
                  decimals: int, modulus: Decimal | None) -> Sample | None:
    """The counter's value at `boundary_ms` from its freeze register, as a sample exactly on the
    boundary; None when there is no usable freeze read."""
    after = [r for r in freeze_reads if r.ts >= boundary_ms + FREEZE_SETTLE_MS
             and r.quality == Quality.GOOD and r.value is not None]
    if not after:
        return None
    value = counters.to_decimal(after[0].value, decimals)  # type: ignore[arg-type]
    before = [s for s in samples if s.ts <= boundary_ms]
    later = [s for s in samples if s.ts > boundary_ms]
    if before and _forward(before[-1].value, value, modulus) is None:
        return None
    if later and _forward(value, later[0].value, modulus) is None:
        return None
    if before and later:
        whole = _forward(before[-1].value, later[0].value, modulus)
        parts = (_forward(before[-1].value, value, modulus) or 0) + \
            (_forward(value, later[0].value, modulus) or 0)
        if whole is None or parts != whole:
            return None
    return Sample(boundary_ms, value)


def _forward(a: Decimal, b: Decimal, modulus: Decimal | None) -> Decimal | None:
    if b >= a:
        return b - a
    if modulus is not None and b - a + modulus <= modulus / 2:
        return b - a + modulus
    return None
