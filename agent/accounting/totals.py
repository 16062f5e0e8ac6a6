"""综合能源消费总量 and unit consumption: the boundary's inputs minus its outputs, each counted
once, and the total per unit of each product.

total (tce) = Σ inputs × coefficient − Σ outputs × coefficient

over every energy item of the period whose role (agent/config/boundary.py) is input or output:
metered counters and manual entries that cover the period alike. Sub-meters are converted and
shown, never summed. A missing input or output (no value, an incomplete month, a variety that
cannot be converted) makes the total `incomplete` and names it: the figure is never made up
from another meter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from agent.accounting.coal import CoalError, Coefficients, format_decimal
from agent.config.boundary import ENERGY_CLASSES, PRODUCT_CLASS, role_of, unit_consumption_code
from agent.config.codes import split_code, variety_of
from agent.config.schema import DATA_CODE, BoundarySection

INCOMPLETE = "incomplete"
TOTAL_KIND = "total"
UNIT_KIND = "unit_consumption"
COMPUTED_KINDS = frozenset({TOTAL_KIND, UNIT_KIND})
UNIT_PLACES = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class Part:
    """One input, output or sub-meter as it entered the total."""

    code: str
    role: str
    variety: str
    quantity: str
    unit: str
    tce: str
    source: str  # meter point "meter.point", or the manual envelope id


def _variety(it: dict[str, Any]) -> str:
    return it.get("variety") or variety_of(it["dataCode"]) or ""


def energy_total(items: Iterable[dict[str, Any]], manual: Iterable[dict[str, Any]],
                 coefs: Coefficients, boundary: BoundarySection,
                 expected: Iterable[str] = ()) -> dict[str, Any]:
    """The body fields of the total for one period's counter items and manual entries.

    Manual entries are items as `energy-agent enter` seals them, with the envelope id added
    under "envelope"; a manual entry for a code also metered is added to it (a day's delivery
    on top of a meter is the site's choice to declare). `expected`: codes that must have an
    entry in the period (a month's declared inputs and outputs entered by hand)."""
    parts: list[Part] = []
    missing: list[str] = []
    unconverted: list[str] = []
    tce_by_variety: dict[str, Decimal] = {}
    total = Decimal("0.0000")
    sources = [(it, f"{it.get('meter', '')}.{it.get('point', '')}") for it in items
               if it.get("kind") == "counter"]
    sources += [(it, str(it.get("envelope", "manual"))) for it in manual]
    for it, source in sources:
        code = it["dataCode"]
        if not DATA_CODE.match(code) or split_code(code).class_ not in ENERGY_CLASSES:
            continue
        role = role_of(code, boundary)
        if role == "none":
            continue
        variety = _variety(it)
        if it["value"] == "" or INCOMPLETE in it.get("flags", ()):
            if role in ("input", "output"):
                why = "no value" if it["value"] == "" else "not every day of the month"
                missing.append(f"{code} ({role}, {source}): {why}")
            if it["value"] == "":
                continue
        try:
            t = coefs.tce(variety, it["unit"], Decimal(it["value"]), code=code)
        except CoalError as e:
            unconverted.append(code)
            if role in ("input", "output"):
                missing.append(f"{code} ({role}, {source}): {e}")
            continue
        parts.append(Part(code, role, variety, it["value"], it["unit"], format_decimal(t), source))
        if role in ("input", "output"):
            signed = t if role == "input" else -t
            total += signed
            tce_by_variety[variety] = tce_by_variety.get(variety, Decimal(0)) + signed
    seen = {p.code for p in parts} | {m.split(" ", 1)[0] for m in missing}
    missing += [f"{c} ({role_of(c, boundary)}): no entry for this period"
                for c in expected if c not in seen]
    if not any(p.role == "input" for p in parts) and not any("(input" in m for m in missing):
        missing.append("no input of the boundary has a value in this period")
    return {
        "tce": {v: format_decimal(t) for v, t in sorted(tce_by_variety.items())},
        "total_tce": format_decimal(total),
        "total_status": INCOMPLETE if missing else "complete",
        "total_missing": missing,
        "unconverted": sorted(set(unconverted)),
        "boundary": [{"dataCode": p.code, "role": p.role, "variety": p.variety,
                      "value": p.quantity, "unit": p.unit, "tce": p.tce, "source": p.source}
                     for p in parts],
    }


def computed_items(summary: dict[str, Any], items: Sequence[dict[str, Any]],
                   manual: Sequence[dict[str, Any]], boundary: BoundarySection,
                   stat_type: int, period_start: str, input_type: int) -> list[dict[str, Any]]:
    """The total and each product's unit consumption as ordinary items (their own codes)."""
    flags = [INCOMPLETE] if summary["total_status"] == INCOMPLETE else []
    out = [{
        "dataCode": boundary.total_code, "meter": "", "point": "", "variety": "",
        "unit": "tce", "kind": TOTAL_KIND, "value": summary["total_tce"],
        "statType": stat_type, "inputType": input_type, "periodStart": period_start,
        "flags": flags, "reason": "; ".join(summary["total_missing"]),
    }]
    total_kgce = Decimal(summary["total_tce"]) * 1000
    products: dict[str, list[dict[str, Any]]] = {}
    for it in [*items, *manual]:
        code = it.get("dataCode", "")
        if DATA_CODE.match(code) and split_code(code).class_ == PRODUCT_CLASS \
                and it.get("kind") not in COMPUTED_KINDS:
            products.setdefault(code, []).append(it)
    for code, its in sorted(products.items()):
        unit = its[0]["unit"]
        have = [Decimal(i["value"]) for i in its if i["value"] != ""]
        output = sum(have, Decimal(0))
        f = list(flags)
        reason = ""
        if not have or output <= 0:
            value: Decimal | None = None
            f.append(INCOMPLETE)
            reason = "no output in this period"
        else:
            value = (total_kgce / output).quantize(UNIT_PLACES, rounding=ROUND_HALF_UP)
            if any(INCOMPLETE in i.get("flags", ()) for i in its):
                f.append(INCOMPLETE)
                reason = "output not complete"
        out.append({
            "dataCode": unit_consumption_code(code, boundary), "meter": "", "point": "",
            "variety": "", "unit": f"kgce/{unit}", "kind": UNIT_KIND,
            "value": "" if value is None else format_decimal(value), "statType": stat_type,
            "inputType": input_type, "periodStart": period_start, "flags": sorted(set(f)),
            "product": code, "output": format_decimal(output),
            "reason": "; ".join(x for x in (reason, "; ".join(summary["total_missing"])) if x),
        })
    return out


def final_entries(entries: Iterable[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Manual items not superseded by a later entry, each with its envelope id."""
    entries = list(entries)
    superseded = {it.get("supersedes") for _, it in entries if it.get("supersedes")}
    return [{**it, "envelope": env} for env, it in entries if env not in superseded]
