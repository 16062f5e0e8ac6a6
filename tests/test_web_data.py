"""The web page's data layer on a real store: the chain check catches a forged signature and a
broken link, manual corrections show which entry corrected which, and the daemon never loads
the web stack."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.accounting.manual import ManualError, added_tce, enter_value
from agent.config import load_config
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from agent.web import data
from buffer.store import Store
from tests.test_reports import CONFIG

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Any, Store, bytes]]:
    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path))
    cfg = load_config(tmp_path / "agent.toml")
    public, _ = generate_key(cfg.signing.key_file)
    store = Store(tmp_path / "agent.db")
    sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file))
    for i in range(5):
        sealer.seal("readings", {"samples": [["main", "kwh", 1000 + i, f"{i}.25", 0]]},
                    cursor=("sealed_rowid", i + 1))
    yield cfg, store, public
    store.close()


def tamper(store: Store, seq: int, old: bytes, new: bytes) -> None:
    with store.transaction() as c:
        (payload,) = c.execute("SELECT payload FROM payloads WHERE seq = ?", (seq,)).fetchone()
        assert old in bytes(payload)
        c.execute("UPDATE payloads SET payload = ? WHERE seq = ?", (bytes(payload).replace(old, new, 1), seq))


def test_chain_check_verifies_links_and_signatures(site: tuple[Any, Store, bytes]) -> None:
    _, store, public = site
    ok = data.verify_chain(store, public)
    assert ok["verified"] and ok["signatures"] and ok["checked"] == 5 and ok["problem"] is None
    assert data.verify_chain(store, None)["signatures"] is False
    tamper(store, 3, b'"2.25"', b'"9.25"')  # a value changed after signing
    bad = data.verify_chain(store, public)
    assert not bad["verified"] and bad["problem"] == "seq 3: bad signature"
    # Without the key the hash chain still catches it: seq 4's prev no longer matches.
    assert data.verify_chain(store, None)["problem"] == "seq 4: prev is not the hash of seq 3"


def test_chain_check_with_another_key_fails(site: tuple[Any, Store, bytes], tmp_path: Path) -> None:
    _, store, _ = site
    other, _ = generate_key(tmp_path / "other.pem")
    assert data.verify_chain(store, other)["problem"] == "seq 1: bad signature"


def test_manual_history_links_corrections_and_tce_preview(site: tuple[Any, Store, bytes]) -> None:
    cfg, store, _ = site
    now = int(time.time() * 1000)
    first, _, _ = enter_value(cfg, "00-00-0000-010101-10", "10", "t", entered_ms=now, month="2026-11",
                              variety="raw_coal", note="typo")
    fixed, _, _ = enter_value(cfg, "00-00-0000-010101-10", "100", "t", entered_ms=now, month="2026-11",
                              variety="raw_coal", supersedes=first)
    hist = data.manual_history(store)
    assert [h["id"] for h in hist] == [fixed, first]  # newest first
    assert hist[1]["superseded_by"] == fixed and hist[0]["supersedes"] == first
    with pytest.raises(ManualError, match="no manual entry"):
        enter_value(cfg, "00-00-0000-010101-10", "1", "t", entered_ms=now, month="2026-11", supersedes="nope")
    assert added_tce(cfg, "00-00-0000-010101-10", "raw_coal", "t", "100") == "71.4300"
    assert added_tce(cfg, "00-00-0000-040101-10", "", "t", "100") is None  # a product: no tce
    with pytest.raises(ManualError, match="no standard-coal coefficient"):
        added_tce(cfg, "00-00-0000-010101-10", "moonrock", "t", "1")


def test_the_daemon_never_loads_the_web_stack() -> None:
    probe = ("import sys, agent.cli, agent.runtime.app, agent.commands.run, agent.commands.status;"
             "agent.cli.build_parser('run');"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('starlette', 'uvicorn', 'xlsxwriter', 'anyio') or m.startswith('agent.web')))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_hostile_text_from_a_meter_is_escaped_and_clipped() -> None:
    from zoneinfo import ZoneInfo

    from agent.web import pages

    evil = '<script>alert(1)</script>\x1b[31m"' + "x" * 500
    d = {"meters": [{"meter": "m<1>", "bus": "b", "unit": 1, "state": "offline", "last_good_ms": None,
                     "errors_total": 1, "last_error": data._clip(evil), "last_error_ms": 0,
                     "values": [{"point": "p", "unit": "kWh", "value": None}]}], "buses": []}
    html = pages.meters(d, "en", ZoneInfo("Asia/Shanghai"))
    assert "<script>" not in html and "&lt;script&gt;" in html and "m&lt;1&gt;" in html
    assert "\x1b" not in html and "x" * 200 not in html
    page = pages.layout("zh", "meters", "", query="item=a&lang=zh&day=<x>")
    assert 'href="?item=a&amp;day=&lt;x&gt;&amp;lang=en"' in page  # the switch keeps the rest, escaped


def test_overview_shows_the_sealed_total_its_reason_and_the_restatement(tmp_path: Path) -> None:
    from datetime import date

    from agent.accounting.manual import manual_body, seal_manual
    from agent.accounting.reports import Reporter
    from agent.accounting.restate import restate_period
    from agent.web import pages
    from tests.test_reports import TZ, ms
    from tests.test_totals import SITE, _day_of_reads, _site

    cfg = load_config(_site(tmp_path, extra='[boundary]\ninputs = ["00-00-0000-010104-10"]\n'))
    generate_key(cfg.signing.key_file)
    now = ms("2026-12-01T09:00")
    store = Store(tmp_path / "agent.db")
    try:
        sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file), clock=lambda: now / 1000)
        rep = Reporter(cfg, store, sealer)
        # Incomer B silent all day: (60 000 − 30 000) kWh × 0.1229 = 3.6870 tce, incomplete.
        _day_of_reads(store, "2026-11-21", "2026-11-22",
                      {n: k for n, _, k in SITE if n != "incomer-b"})
        sealer.seal("daily", rep.day_body(date(2026, 11, 21), now), period="2026-11-21")
        sealer.seal("monthly", rep.month_body("2026-11", now), period="2026-11")
        first = data.overview(cfg, store, now)["sealed"]
        day, month = first["day"], first["month"]
        assert day is not None and month is not None
        assert (day["period"], day["total_tce"], day["dataCode"]) == ("2026-11-21", "3.6870", "00-00-0000-080000-00")
        assert day["incomplete"] and day["reason"] == "01-01-0002-020201-10 (input, incomer-b.kwh): no value"
        assert month["period"] == "2026-11" and month["total_tce"] == "3.6870" and month["incomplete"]
        assert day["unit_consumption"] == [] and day["restatements"] == 0

        # 250 t of product entered late: the day is restated; the newest envelope wins and
        # carries the unit consumption, 3 687.0 kgce / 250 t = 14.7480 kgce/t.
        b, period = manual_body("00-00-0000-040001-00", "250", "t", tz=TZ, entered_ms=now, day="2026-11-21")
        seal_manual(store, sealer, b, period)
        assert restate_period(rep, "daily", "2026-11-21", "output entered late", now)
        d = data.overview(cfg, store, now)
        day = d["sealed"]["day"]
        assert day["restatements"] == 1 and day["restated"] == "output entered late"
        assert day["supersedes"] == first["day"]["envelope"] and day["total_tce"] == "3.6870"
        (uc,) = day["unit_consumption"]
        assert (uc["dataCode"], uc["product"], uc["value"], uc["unit"]) == \
            ("00-00-0000-080001-00", "00-00-0000-040001-00", "14.7480", "kgce/t")
        assert uc["incomplete"]  # the total it divides is incomplete
        html = pages.overview(d, "zh", TZ)
        assert '<td class="num" id="sealed-total-day">3.6870</td>' in html
        assert '<td class="num" id="sealed-total-month">' in html and "综合能源消费总量" in html
        assert "01-01-0002-020201-10 (input, incomer-b.kwh): no value" in html and "不完整" in html
        assert "单位产品综合能耗" in html and "14.7480 kgce/t" in html and "已更正 1 次" in html
        en = pages.overview(d, "en", TZ)
        assert "Comprehensive energy consumption per unit of product" in en and "restated 1×" in en
    finally:
        store.close()
