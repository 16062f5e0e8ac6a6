"""综合能源消费总量 at the metering boundary: the worked cases of issue 15 and a property over
generated sites (inputs, outputs, sub-meters, manual entries)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting import totals
from agent.accounting.coal import coefficients
from agent.accounting.manual import manual_body, seal_manual
from agent.accounting.reports import Reporter
from agent.accounting.statistics import energy_summary
from agent.config import ConfigError, load_config
from agent.config.schema import BoundarySection
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from buffer.store import Store
from drivers.base import Quality, Reading
from tests.test_reports import CONFIG, TZ, ms

# The site of tests/test_reports.py without its meter.
HEAD = CONFIG.split("[[meter]]")[0]

METER = """
[[meter]]
name = "{name}"
bus = "tcp1"
unit = {unit}

[[meter.point]]
name = "kwh"
register = 0
type = "u32"
scale = 0.01
kind = "counter"
variety = "electricity"
unit = "kWh"
code = "{code}"
"""

# Two incomers coded per equipment (no whole-plant code), a sub-meter behind them, and the
# feeder that sells electricity on.
SITE = [("incomer-a", "01-01-0001-020201-10", 60_000), ("incomer-b", "01-01-0002-020201-10", 40_000),
        ("workshop", "02-01-0001-020201-30", 25_000), ("sold", "00-00-0000-020201-20", 30_000)]


def _site(tmp_path: Path, meters=SITE, extra: str = "") -> Path:
    text = HEAD.format(dir=tmp_path) + extra
    for i, (name, code, _) in enumerate(meters):
        text += METER.format(name=name, unit=i + 1, code=code)
    (tmp_path / "agent.toml").write_text(text)
    return tmp_path / "agent.toml"


@pytest.fixture
def rig(tmp_path: Path):
    cfg = load_config(_site(tmp_path, extra='[boundary]\ninputs = ["00-00-0000-010104-10"]\n'))
    generate_key(cfg.signing.key_file)
    store = Store(tmp_path / "agent.db")
    sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file),
                    clock=lambda: ms("2026-12-01T09:00") / 1000)
    yield cfg, store, sealer
    store.close()


def _day_of_reads(store: Store, day: str, nxt: str, per_day: dict[str, int]) -> None:
    rows = []
    for name, kwh in per_day.items():
        for when, v in ((f"{day}T00:00", 1000.0), (f"{day}T12:00", 1000.0 + kwh / 2),
                        (f"{nxt}T00:00", 1000.0 + kwh), (f"{nxt}T00:10", 1000.0 + kwh)):
            rows.append(Reading(name, "kwh", ms(when), v, Quality.GOOD))
    store.readings.add_readings(rows)


def _item(body: dict, code: str) -> dict:
    (it,) = [i for i in body["items"] if i["dataCode"] == code]
    return it


def test_bought_minus_sold_with_sub_meters_and_coal_by_hand(rig):
    cfg, store, sealer = rig
    _day_of_reads(store, "2026-11-21", "2026-11-22", {n: k for n, _, k in SITE})
    rep = Reporter(cfg, store, sealer)
    body = rep.day_body(date(2026, 11, 21), ms("2026-12-01T09:00"))
    # (60 000 + 40 000 bought − 30 000 sold) kWh × 0.1229 kgce/kWh = 8 603.0 kgce = 8.6030 tce;
    # the 25 000 kWh workshop sub-meter is shown, never summed (not 125 000 kWh, not 15.9770).
    assert body["total_tce"] == "8.6030" and body["total_status"] == "complete"
    assert body["tce"] == {"electricity": "8.6030"}
    total = _item(body, "00-00-0000-080000-00")
    assert total["value"] == "8.6030" and total["unit"] == "tce" and total["statType"] == 1
    roles = {p["source"]: (p["role"], p["tce"]) for p in body["boundary"]}
    assert roles["workshop.kwh"] == ("sub", "3.0725") and roles["sold.kwh"] == ("output", "3.6870")
    assert body["electricity_convention"] == "equivalent"

    # 1 140.10 t of raw coal entered for the month: 1 140 100 kg × 0.7143 = 814 373.43 kgce.
    b, period = manual_body("00-00-0000-010104-10", "1140.10", "t", tz=TZ,
                            entered_ms=ms("2026-12-01T08:00"), month="2026-11", variety="raw_coal")
    seal_manual(store, sealer, b, period)
    month = rep.month_body("2026-11", ms("2026-12-01T09:00"))
    coal = [p for p in month["boundary"] if p["dataCode"] == "00-00-0000-010104-10"]
    assert coal[0]["tce"] == "814.3734" and coal[0]["role"] == "input"
    # The month's electricity: only the 21st has reads; 814.3734 + 8.6030 = 822.9764 tce,
    # incomplete because the other days of the month have no value.
    assert month["total_tce"] == "822.9764" and month["total_status"] == "incomplete"
    assert any("incomer-a.kwh" in m for m in month["total_missing"])
    assert _item(month, "00-00-0000-080000-00")["flags"] == ["incomplete"]


def test_missing_input_makes_the_total_incomplete_not_a_fallback(rig):
    cfg, store, sealer = rig
    # Incomer B is silent all day: no fallback to the sub-meter, the total says what is missing.
    _day_of_reads(store, "2026-11-21", "2026-11-22",
                  {"incomer-a": 60_000, "workshop": 25_000, "sold": 30_000})
    body = Reporter(cfg, store, sealer).day_body(date(2026, 11, 21), ms("2026-12-01T09:00"))
    assert body["total_status"] == "incomplete"
    assert body["total_missing"] == ["01-01-0002-020201-10 (input, incomer-b.kwh): no value"]
    assert body["total_tce"] == "3.6870"  # (60 000 − 30 000) × 0.1229, flagged, never guessed
    assert "01-01-0002-020201-10" in _item(body, "00-00-0000-080000-00")["reason"]


def test_product_output_gives_unit_consumption(rig):
    cfg, store, sealer = rig
    _day_of_reads(store, "2026-11-21", "2026-11-22", {n: k for n, _, k in SITE})
    b, period = manual_body("00-00-0000-040001-00", "250", "t", tz=TZ,
                            entered_ms=ms("2026-11-22T08:00"), day="2026-11-21")
    seal_manual(store, sealer, b, period)
    body = Reporter(cfg, store, sealer).day_body(date(2026, 11, 21), ms("2026-12-01T09:00"))
    assert _item(body, "00-00-0000-080000-00")["kind"] == "total"
    # 8 603.0 kgce / 250 t = 34.4120 kgce/t, under the product's code with class 08.
    uc = _item(body, "00-00-0000-080001-00")
    assert uc["kind"] == "unit_consumption" and uc["product"] == "00-00-0000-040001-00"
    assert uc["value"] == "34.4120" and uc["unit"] == "kgce/t" and uc["output"] == "250"


def test_check_config_flags_contradictions(tmp_path: Path):
    def problems(meters, extra: str = "") -> str:
        try:
            load_config(_site(tmp_path, meters, extra))
        except ConfigError as e:
            return "\n".join(e.lines)
        return ""

    # A code counted twice: two points with one purchased code.
    twice = [("a", "00-00-0000-020201-10", 0), ("b", "00-00-0000-020201-10", 0)]
    assert "summed twice" in problems(twice)
    # Variety vs the code's variety field: 0104 is bituminous coal, the point says electricity.
    assert "contradicts the code" in problems([("a", "00-00-0000-010104-10", 0)])
    # A boundary without an input: only sub-meters.
    assert "no input" in problems([("a", "02-01-0001-020201-30", 0)])
    # A code both input and sub-meter.
    assert "a code has one role" in problems(
        SITE, '[boundary]\ninputs = ["02-01-0001-020201-30"]\nsub_meters = ["02-01-0001-020201-30"]\n')
    # A misspelt variety converts to nothing: refused instead of 0 tce.
    text = _site(tmp_path, SITE).read_text().replace('variety = "electricity"', 'variety = "electricty"', 1)
    (tmp_path / "agent.toml").write_text(text)
    with pytest.raises(ConfigError, match="no standard-coal coefficient"):
        load_config(tmp_path / "agent.toml")
    assert problems(SITE) == ""


def test_per_code_coefficients_steam_by_pressure_and_gas_by_calorific_value():
    from agent.config.schema import CodeCoefficient
    c = coefficients(per_code={
        "00-00-0000-020203-10": CodeCoefficient(pressure_mpa=1.0),
        "00-00-0000-010103-10": CodeCoefficient(calorific_mj_per_m3=35.588),
        "01-00-0000-020203-10": CodeCoefficient(enthalpy_mj_per_kg=2.9),
    })
    # Saturated steam at 1.0 MPa: h'' = 2 777.1 kJ/kg (IAPWS-IF97) × 0.03412 = 0.0948 kgce/kg,
    # not the 0.1284 default (35 % above).
    assert c.per_code["00-00-0000-020203-10"] == Decimal("0.0948")
    assert c.tce("steam", "t", Decimal("10"), code="00-00-0000-020203-10") == Decimal("0.9480")
    # Natural gas of 35.588 MJ/m³: 35 588 / 29 307.6 = 1.2143 kgce/m³.
    assert c.per_code["00-00-0000-010103-10"] == Decimal("1.2143")
    assert c.per_code["01-00-0000-020203-10"] == Decimal("0.0989")


VARIETIES = {"electricity": ("0201", "02", "kWh"), "natural_gas": ("0103", "01", "m3"),
             "raw_coal": ("0104", "01", "t")}
USAGE = {"input": "10", "output": "20", "sub": "30"}


@st.composite
def sites(draw):
    items, manual = [], []
    for n in range(draw(st.integers(1, 8))):
        variety = draw(st.sampled_from(sorted(VARIETIES)))
        tttt, cc, unit = VARIETIES[variety]
        role = draw(st.sampled_from(sorted(USAGE)))
        code = f"{n:02d}-00-0000-{cc}{tttt}-{USAGE[role]}"
        value = f"{Decimal(draw(st.integers(0, 10**8))) / 100:f}"
        it = {"dataCode": code, "variety": variety, "unit": unit, "value": value, "flags": []}
        if draw(st.booleans()):
            manual.append({**it, "envelope": f"m-{n}"})
        else:
            items.append({**it, "kind": "counter", "meter": f"m{n}", "point": "p"})
    return items, manual


@settings(max_examples=300, deadline=None)
@given(sites())
def test_total_is_inputs_minus_outputs_over_any_site(site):
    items, manual = site
    c = coefficients()
    s = energy_summary(items, c, BoundarySection(), manual)
    expect = Decimal(0)
    for it in [*items, *manual]:
        role = {"10": "input", "20": "output", "30": "sub"}[it["dataCode"][-2:]]
        t = c.tce(it["variety"], it["unit"], Decimal(it["value"]))
        expect += t if role == "input" else -t if role == "output" else 0
    assert Decimal(s["total_tce"]) == expect
    # Sub-meters never move the total: drop them all and it is the same.
    no_subs = energy_summary([i for i in items if not i["dataCode"].endswith("30")], c,
                             BoundarySection(), [m for m in manual if not m["dataCode"].endswith("30")])
    assert no_subs["total_tce"] == s["total_tce"]
    # Each input or output is counted once in the breakdown.
    counted = [p for p in s["boundary"] if p["role"] in ("input", "output")]
    assert len(counted) == sum(1 for i in [*items, *manual] if not i["dataCode"].endswith("30"))


def test_superseded_manual_entry_counts_once():
    entries = [("e-1", {"dataCode": "x", "supersedes": ""}), ("e-2", {"dataCode": "x", "supersedes": "e-1"})]
    assert [e["envelope"] for e in totals.final_entries(entries)] == ["e-2"]
    assert json.dumps(totals.final_entries([]))


def test_check_config_refuses_ambiguous_or_out_of_table_coefficients(tmp_path: Path):
    extra = ('[coefficient."00-00-0000-020203-10"]\nkgce = 0.1\npressure_mpa = 1.0\n\n'
             '[coefficient."01-00-0000-020203-10"]\npressure_mpa = 9.0\n')
    with pytest.raises(ConfigError) as e:
        load_config(_site(tmp_path, SITE, extra))
    text = "\n".join(e.value.lines)
    assert "give exactly one of" in text and "(got kgce, pressure_mpa)" in text
    assert "0.1–4.0 MPa" in text
