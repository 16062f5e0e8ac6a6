"""The web page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium) against `energy-agent serve` on a store the real agent filled from a real
Modbus meter and a real broker (tests/web_site.py). The numbers on the pages are checked
against the store, a manual entry goes in through the form and comes out of `export`, a
set-aside envelope is resent from the Deliveries page, and every page is saved as a screenshot.

EA_WEB_SCREENSHOTS=DIR also copies the overview and load-curve screenshots there (docs/ holds
the ones docs/web.md shows).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.accounting import statistics
from buffer.names import MQTT
from buffer.store import Store
from drivers.base import Quality
from tests.agent_harness import REPO
from tests.web_site import TZ, Site, build_site, local_today

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
PASSWORD = "site manager 2026"
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (hil/bootstrap.sh installs them)"),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web")
    s = build_site(tmp, web_extra=f'password_file = "{tmp / "web-password"}"', agent_seconds=6)
    try:
        r = subprocess.run([sys.executable, "-m", "agent", "web-passwd", "-c", str(s.config), "--password-stdin"],
                           input=PASSWORD + "\n", capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        s.start_serve()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1200,1150", "--lang=zh-CN"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=opts)
    d.implicitly_wait(5)
    try:
        yield d
    finally:
        d.quit()


def shot(browser: Any, site: Site, name: str) -> None:
    out = site.tmp / "screens"
    out.mkdir(exist_ok=True)
    browser.save_screenshot(str(out / f"web-{name}.png"))
    target = os.environ.get("EA_WEB_SCREENSHOTS")
    if target and name in ("overview", "curves"):
        shutil.copy(out / f"web-{name}.png", Path(target) / f"web-{name}.png")


def submit(browser: Any, by: str, what: str) -> None:
    """Click a button and wait for the page it loads: a click returns before the navigation
    ends, and reading right after it could read the page being left."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(by, what).click()
    WebDriverWait(browser, 30).until(expected_conditions.staleness_of(old))


def cell(browser: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, css).text).strip()


def today_kwh_from_store(db: Path) -> Decimal:
    """Last good counter read today minus the read at 00:00 (the history has one exactly there)."""
    tz = ZoneInfo(TZ)
    start = statistics.day_start_ms(local_today(), tz)
    s = Store(db, readonly=True)
    try:
        rows = [r for r in s.readings.readings_for("main", "import_active_energy", start, start + 86_400_000)
                if r.quality == Quality.GOOD and r.value is not None]
    finally:
        s.close()
    assert rows[0].ts == start
    return (Decimal(repr(rows[-1].value)) - Decimal(repr(rows[0].value))).quantize(Decimal("0.01"))


def test_pages_show_what_the_store_holds(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site.url + "/overview")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.NAME, "user").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    submit(browser, By.ID, "login")
    assert browser.current_url.endswith("/overview")

    # Today's kWh and its standard coal (0.1229 kgce/kWh, equivalent value).
    kwh = today_kwh_from_store(site.db)
    assert kwh > 100
    shown = cell(browser, '[data-key="main.import_active_energy"][data-field="today"]')
    assert Decimal(shown) == kwh
    tce = (kwh * Decimal("0.1229") / 1000).quantize(Decimal("0.0001"))
    assert Decimal(cell(browser, "#total-tce-today")) == tce
    assert "综合能源消费总量" in browser.page_source and "吨标准煤" in browser.page_source
    assert "计量器具离线" in browser.page_source and "boiler-house" in browser.page_source
    shot(browser, site, "overview")

    # Completeness: the heat map's cells are the sealed daily envelopes' figures; the day
    # before yesterday lost 4 of its 24 hours (83.3 %) and falls below the 90 % line.
    browser.get(site.url + "/completeness")
    s = Store(site.db, readonly=True)
    try:
        for back in (1, 2):
            day = (local_today() - timedelta(days=back)).isoformat()
            if day[:7] != local_today().isoformat()[:7]:
                continue  # the map shows this month; that day is on last month's
            (env,) = s.outbox.envelopes("daily", day, day)
            item = next(i for i in json.loads(env.payload)["body"]["items"] if i["point"] == "import_active_energy")
            td = f'tr[data-key="main.import_active_energy"] td[data-day="{day}"]'
            ratio = browser.find_element(By.CSS_SELECTOR, td).get_attribute("data-ratio")
            assert float(ratio) == pytest.approx(float(item["completeness"]), abs=1e-4)
            if back == 2:
                assert float(ratio) == pytest.approx(20 / 24, abs=2e-3) and float(ratio) < 0.9
                submit(browser, By.CSS_SELECTOR, td + " a")
                assert "240.0 min" in browser.page_source  # why: the 4-hour gap, listed
        pending = s.outbox.backlog(MQTT)[0]
    finally:
        s.close()
    shot(browser, site, "completeness")

    # Deliveries: the broker went away before the agent stopped, so a backlog is waiting.
    browser.get(site.url + "/deliveries")
    assert pending > 0
    assert int(cell(browser, '[data-dest="mqtt"][data-field="pending"]')) == pending
    assert "校验通过" in cell(browser, "#chain-state")
    shot(browser, site, "deliveries")

    browser.get(site.url + "/meters")
    assert "在线" in browser.page_source and "离线" in browser.page_source
    shot(browser, site, "meters")

    browser.get(site.url + "/curves?item=main.import_active_energy&overlay=2")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curve path")) == 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars rect")) >= 2
    shot(browser, site, "curves")

    browser.get(site.url + "/export")
    shot(browser, site, "export")
    submit(browser, By.ID, "lang")
    assert "Export" in browser.page_source and "Monthly report" in browser.page_source
    submit(browser, By.ID, "lang")  # back to Chinese for the tests after this one


def session_cookie(browser: Any) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())


def download(site: Site, browser: Any, path: str) -> bytes:
    req = urllib.request.Request(site.url + path, headers={"Cookie": session_cookie(browser)})
    with urllib.request.urlopen(req, timeout=60) as r:
        return bytes(r.read())


def test_manual_entry_through_the_form_shows_its_tce_and_lands_in_export(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    month = (local_today() - timedelta(days=1)).strftime("%Y-%m")  # a month with an ended day
    browser.get(site.url + "/manual")
    browser.find_element(By.NAME, "code").send_keys("00-00-0000-010101-10")
    Select(browser.find_element(By.NAME, "kind")).select_by_value("month")
    browser.find_element(By.NAME, "period").send_keys(month)
    browser.find_element(By.NAME, "value").send_keys("12.5")
    browser.find_element(By.NAME, "unit").send_keys("t")
    Select(browser.find_element(By.NAME, "variety")).select_by_value("raw_coal")
    browser.find_element(By.NAME, "note").send_keys("原煤进厂 web")
    submit(browser, By.ID, "preview")
    # 12.5 t raw coal × 0.7143 kgce/kg = 8.92875 tce, shown to 0.1 kgce before anything is saved
    assert "8.9288" in cell(browser, "#msg")
    s = Store(site.db, readonly=True)
    try:
        assert s.outbox.envelopes("manual") == []
    finally:
        s.close()
    submit(browser, By.ID, "save")
    saved = cell(browser, "#msg")
    assert "已签名保存" in saved
    env_id = saved.split("：", 1)[1].split(" ")[0]
    shot(browser, site, "manual")
    assert env_id in cell(browser, "table.history")

    r = subprocess.run([sys.executable, "-m", "agent", "export", "-c", str(site.config), "--month", month],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("manual,"))
    assert env_id in line and "00-00-0000-010101-10" in line and ",12.5," in line and "原煤进厂 web" in line

    csv_text = download(site, browser, f"/export/monthly?month={month}&format=csv").decode("utf-8-sig")
    assert any(env_id in x and ",12.5," in x for x in csv_text.splitlines())
    xlsx = download(site, browser, f"/export/monthly?month={month}&format=xlsx")
    with zipfile.ZipFile(io.BytesIO(xlsx)) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode("utf-8")
    assert env_id in sheet and "原煤进厂 web" in sheet
    assert "<v>12.5</v>" in sheet  # a number Excel can sum, not text
    today = local_today().isoformat()
    raw = download(site, browser, f"/export/raw?from={today}&to={today}&format=csv").decode("utf-8-sig")
    assert raw.splitlines()[0].startswith("time,meter,point,value")
    assert sum(1 for x in raw.splitlines() if ",main,import_active_energy," in x) > 1000


def test_resend_from_the_deliveries_page(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    s = Store(site.db)
    try:
        seq = s.outbox.pending(MQTT, 1)[0].seq
        s.outbox.mark_rejected(MQTT, seq, "packet too large for the broker (test)")
    finally:
        s.close()
    # What the daemon sets aside shows within the page's cache time (CACHE_S, 5 s).
    deadline = time.time() + 15
    while True:
        browser.get(site.url + "/deliveries")
        if "packet too large" in browser.page_source or time.time() > deadline:
            break
        time.sleep(1)
    assert "packet too large" in browser.page_source
    browser.find_element(By.CSS_SELECTOR, f'input[name="seq"][value="{seq}"]').click()
    submit(browser, By.XPATH, "//button[contains(., '重新发送')]")
    assert str(seq) in cell(browser, "#msg")
    s = Store(site.db, readonly=True)
    try:
        assert s.outbox.rejected(MQTT) == [] and s.outbox.pending(MQTT, 1)[0].seq == seq
    finally:
        s.close()


def test_json_endpoints_answer_with_basic_auth(site: Site) -> None:
    import base64

    auth = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    month = datetime.now(ZoneInfo(TZ)).strftime("%Y-%m")
    for path in ("/api/overview", "/api/meters", "/api/deliveries", "/api/items", "/api/manual",
                 f"/api/completeness?month={month}", f"/api/daily?month={month}",
                 "/api/curves?item=main.active_power&overlay=1"):
        req = urllib.request.Request(site.url + path, headers={"Authorization": auth})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("application/json"), path
            json.loads(r.read())
