"""Read plans that differ from the configured one (a meter refuses some of its points), kept
in the store's state so `status` — another process — can show how each meter is read."""

from __future__ import annotations

import json
from typing import Any

KEY = "read_plan."


def save_read_plan(store: Any, meter: str, plan: list[str] | None) -> None:
    """`plan`: the driver's description (requests, then refused points); None: as configured."""
    store.state.set(KEY + meter, json.dumps(plan, ensure_ascii=False))


def load_read_plan(store: Any, meter: str) -> list[str] | None:
    text = store.state.get(KEY + meter)
    try:
        plan = json.loads(text) if text else None
    except ValueError:
        return None
    return [str(line) for line in plan] if isinstance(plan, list) else None
