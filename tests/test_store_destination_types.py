"""Destinations that take only some envelope types: what they do not take is done for them
from the moment it is sealed (and, for envelopes sealed before, from the next open), so it
counts in no backlog and holds back no retention; what they take stays until they have it."""

from __future__ import annotations

import time
from pathlib import Path

from buffer.retention import prune
from buffer.store import EnvelopeMeta, Store
from tests.store_helpers import enqueue as put

DAY = 86_400_000


def enqueue(store: Store, type_: str, created_ms: int) -> int:
    seq, _ = store.outbox.chain_head()
    meta = EnvelopeMeta(seq, f"E-G-{seq}", type_, f"energy/E/G/up/{type_}", created_ms)
    return put(store, b'{"seq": %d}' % seq, meta)


def test_types_a_destination_does_not_take_are_done_for_it(tmp_path: Path) -> None:
    old = int(time.time() * 1000) - 400 * DAY
    store = Store(tmp_path / "a.db", {"mqtt": None, "province": {"daily", "monthly"}})
    r1 = enqueue(store, "readings", old)
    d1 = enqueue(store, "daily", old)
    s1 = enqueue(store, "status", old)
    assert store.outbox.backlog("mqtt")[0] == 3
    assert store.outbox.backlog("province")[0] == 1
    assert [r.seq for r in store.outbox.pending("province", 10)] == [d1]
    store.outbox.mark_delivered("mqtt", [r1, d1, s1])
    # Everything is past the history window; only the daily still waits for the province.
    prune(store, int(time.time() * 1000), DAY, 183 * DAY, None)
    left = [r.seq for t in ("readings", "daily", "status") for r in store.outbox.envelopes(t)]
    assert left == [d1]
    store.outbox.mark_delivered("province", [d1])
    prune(store, int(time.time() * 1000), DAY, 183 * DAY, None)
    assert store.outbox.envelopes("daily") == []
    store.close()


def test_a_destination_added_later_skips_old_envelopes_of_other_types(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db", ["mqtt"])
    now = int(time.time() * 1000)
    seqs = [enqueue(store, t, now) for t in ("readings", "interval", "status", "manual")]
    store.close()
    store = Store(tmp_path / "a.db", {"mqtt": None, "province": {"interval", "manual"}})
    assert [r.seq for r in store.outbox.pending("province", 10)] == [seqs[1], seqs[3]]
    assert store.outbox.backlog("province")[0] == 2 and store.outbox.backlog("mqtt")[0] == 4
    store.outbox.mark_delivered("province", [seqs[1], seqs[3]])
    assert store.outbox.backlog("province") == (0, None)
    store.close()
    # Read-only (status beside the daemon): the same figures, nothing written.
    ro = Store(tmp_path / "a.db", {"mqtt": None, "province": {"interval", "manual"}}, readonly=True)
    assert ro.outbox.backlog("province") == (0, None)
    ro.close()


def test_the_web_deliveries_page_lists_each_configured_destination(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.config.destinations import destination_types
    from agent.web import data
    from tests.test_config_destinations import PROVINCE
    from tests.test_reports import CONFIG

    (tmp_path / "agent.toml").write_text(CONFIG.format(dir=tmp_path) + PROVINCE)
    cfg = load_config(tmp_path / "agent.toml")
    store = Store(cfg.db_path, destination_types(cfg))
    now = int(time.time() * 1000)
    enqueue(store, "readings", now)
    enqueue(store, "daily", now)
    store.close()
    ro = Store(cfg.db_path, destination_types(cfg), readonly=True)
    d = {x["destination"]: x for x in data.deliveries(cfg, ro, now, None)["destinations"]}
    ro.close()
    assert d["mqtt"]["pending"] == 2 and d["yunnan"]["pending"] == 1
