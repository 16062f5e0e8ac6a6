"""Downloads: the monthly report (the rows of `energy-agent export --month`) and the raw
samples of a range, each as CSV or as an .xlsx workbook.

XlsxWriter is imported on the first .xlsx download only (2.7 MiB resident and 18 ms of import
on top of serve's own imports, measured here), and writes in constant-memory mode: rows go to
a temporary file as they come, so a month of raw samples does not sit in RAM.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

from agent.accounting import statistics
from agent.commands.export import COLUMNS, export_rows
from agent.config import Config
from agent.web.data import ReadOnlyReporter
from buffer.store import Store

RAW_COLUMNS = ["time", "meter", "point", "value", "unit", "quality", "dataCode"]
NUMERIC = frozenset({"value", "samples", "samplesExpected", "completeness"})
DECIMAL = re.compile(r"-?\d{1,15}(\.\d{1,12})?")
MAX_RAW_DAYS = 31
MAX_RAW_ROWS = 1_000_000  # one xlsx sheet holds 1,048,576 rows


def monthly_rows(cfg: Config, store: Store, month: str, now_ms: int) -> tuple[list[str], list[dict[str, Any]]]:
    rep = ReadOnlyReporter(cfg, store, None)
    return COLUMNS, list(export_rows(rep, store, day=None, month=month, now_ms=now_ms))


def raw_rows(cfg: Config, store: Store, first: date, last: date) -> tuple[list[str], Iterator[dict[str, Any]]]:
    if last < first or (last - first).days >= MAX_RAW_DAYS:
        raise ValueError(f"range: expected 1 to {MAX_RAW_DAYS} days, from ≤ to")
    start = statistics.day_start_ms(first, cfg.tz)
    end = statistics.day_start_ms(last + timedelta(days=1), cfg.tz)

    def rows() -> Iterator[dict[str, Any]]:
        n = 0
        for m in cfg.meter:
            for p in m.points:
                for r in store.readings.readings_for(m.name, p.name, start, end):
                    n += 1
                    if n > MAX_RAW_ROWS:
                        return
                    yield {"time": datetime.fromtimestamp(r.ts / 1000, cfg.tz).isoformat(timespec="milliseconds"),
                           "meter": m.name, "point": p.name, "value": "" if r.value is None else r.value,
                           "unit": p.unit, "quality": r.quality.name.lower(), "dataCode": p.code or ""}
    return RAW_COLUMNS, rows()


def to_csv(columns: list[str], rows: Any) -> bytes:
    buf = io.StringIO()
    buf.write("\ufeff")  # Excel opens UTF-8 CSV with Chinese text correctly only with a BOM
    w = csv.DictWriter(buf, columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def to_xlsx(columns: list[str], rows: Any, sheet: str) -> bytes:
    """A workbook of one sheet. Decimal strings in the figure columns become numbers (so Excel
    sums them); every other cell is text, never a formula or a link."""
    import xlsxwriter

    with tempfile.TemporaryDirectory(prefix="energy-agent-xlsx-") as tmp:
        path = f"{tmp}/out.xlsx"
        wb = xlsxwriter.Workbook(path, {"constant_memory": True, "tmpdir": tmp,
                                        "strings_to_numbers": False, "strings_to_formulas": False,
                                        "strings_to_urls": False})
        ws = wb.add_worksheet(sheet[:31])
        bold = wb.add_format({"bold": True})
        ws.write_row(0, 0, columns, bold)
        for i, row in enumerate(rows, start=1):
            for j, col in enumerate(columns):
                v = row.get(col, "")
                if isinstance(v, list):
                    v = ";".join(map(str, v))
                if isinstance(v, str) and col in NUMERIC and DECIMAL.fullmatch(v):
                    v = float(v)
                if isinstance(v, int | float) and not isinstance(v, bool):
                    ws.write_number(i, j, v)
                else:
                    ws.write_string(i, j, str(v))
        wb.close()
        with open(path, "rb") as f:
            return f.read()
