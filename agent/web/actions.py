"""The page's two writes: a manual entry and a resend of set-aside envelopes.

Both run exactly what the CLI runs (`energy-agent enter`: agent/accounting/manual.py's
`enter_value`; `energy-agent resend`: the store's `requeue`), on a store opened for writing
for the one action and closed again.
"""

from __future__ import annotations

import re
from typing import Any

from agent.accounting.manual import ManualError, added_tce, enter_value
from agent.config import Config
from buffer.store import Store

MAX_NOTE = 200


def manual_args(form: dict[str, str]) -> dict[str, Any]:
    """The form's fields as enter_value's arguments (validation itself is manual_body's)."""
    kind = form.get("kind", "month")
    period = form.get("period", "").strip()
    note = form.get("note", "").strip()
    if len(note) > MAX_NOTE:
        raise ManualError(f"note: at most {MAX_NOTE} characters")
    return {"code": form.get("code", "").strip(), "value": form.get("value", "").strip(),
            "unit": form.get("unit", "").strip(), "variety": form.get("variety", "").strip(),
            "note": note, "supersedes": form.get("supersedes", "").strip(),
            "month": period if kind == "month" else None, "day": period if kind == "day" else None}


def preview(cfg: Config, form: dict[str, str]) -> str | None:
    a = manual_args(form)
    if a["month"] is None and a["day"] is None:
        raise ManualError("period: choose day or month")
    return added_tce(cfg, a["code"], a["variety"], a["unit"], a["value"])


def save_manual(cfg: Config, form: dict[str, str], now_ms: int) -> tuple[str, dict[str, Any]]:
    a = manual_args(form)
    id_, body, _ = enter_value(cfg, a.pop("code"), a.pop("value"), a.pop("unit"), entered_ms=now_ms, **a)
    return id_, body


def resend(cfg: Config, destination: str, seqs: list[str], known: list[str]) -> list[int]:
    if destination not in known:
        raise ValueError(f"destination {destination[:40]!r} is not in the store")
    nums = [int(s) for s in seqs if re.fullmatch(r"\d{1,15}", s)]
    if not nums:
        return []
    store = Store(cfg.db_path, destinations=known)
    try:
        return store.outbox.requeue(destination, nums)
    finally:
        store.close()
