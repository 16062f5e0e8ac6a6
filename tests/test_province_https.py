"""The provincial HTTPS destination against the simulator over real TLS on loopback: the real
store, sealer, forwarder and uplink (built by agent/uplink/factory.py, as the daemon does)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from agent.config import ConfigError, load_config
from agent.config.destinations import destination_types
from agent.protocol.sealer import Sealer
from agent.protocol.signing import generate_key, load_signer
from agent.runtime.store_thread import StoreThread
from agent.uplink.factory import open_uplink
from agent.uplink.forwarder import Forwarder
from buffer.store import Store
from hil.province_sim import ProvinceSim

E = "91370600780790663W"
SECRET, PASSWORD = "Wk-0123456789abcdef-test", "pw-4321"
TZ = ZoneInfo("Asia/Shanghai")
A, B = "00-00-0000-020201-10", "00-00-0000-010104-10"
_R = TypeVar("_R")


def write_config(tmp: Path, sim: ProvinceSim, extra: str = "", ca: bool = True, url: str | None = None) -> Path:
    (tmp / "secret").write_text(SECRET)
    (tmp / "password").write_text(PASSWORD)
    ca_line = f'ca_file = "{sim.ca.ca_file}"' if ca and sim.ca else ""
    (tmp / "agent.toml").write_text(f"""
[agent]
gateway = "gw-01"
enterprise = "{E}"
data_dir = "{tmp}"

[signing]
key_file = "{tmp}/key.pem"

[[destination]]
name = "province"
kind = "province-https"
url = "{url or sim.url}"
{ca_line}
secret_key_file = "{tmp}/secret"
password_file = "{tmp}/password"
timeout = 1.0
backoff_min = 0.1
backoff_max = 0.5
{extra}

[[destination.item]]
code = "{A}"
stat_types = [0, 1]

[[destination.item]]
code = "{B}"
stat_types = [0, 1, 2]
""")
    return tmp / "agent.toml"


class Rig:
    def __init__(self, db: StoreThread, store: Store, sealer: Sealer, fwd: Forwarder) -> None:
        self.db, self.store, self.sealer, self.fwd = db, store, sealer, fwd

    async def call(self, fn: Callable[..., _R], *args: Any) -> _R:
        return await self.db.call(fn, *args)

    async def seal(self, type_: str, values: dict[str, str], start: str, stat: int) -> int:
        items = [{"dataCode": c, "value": v, "statType": stat, "inputType": 4,
                  "periodStart": f"{start}T00:00:00+08:00", "flags": []} for c, v in values.items()]
        seq = await self.call(self.sealer.seal, type_, {"items": items}, start)
        self.fwd.wake()
        return seq

    async def until(self, cond: Callable[[], Any], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.call(cond):
            assert time.monotonic() < deadline, f"timed out: {self.fwd.stats()}"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def rig(config: Path) -> AsyncIterator[Rig]:
    cfg = load_config(config)
    if not Path(cfg.signing.key_file).exists():
        generate_key(cfg.signing.key_file)
    db = StoreThread()
    store = await db.call(Store, cfg.db_path, destination_types(cfg))
    sealer = Sealer(cfg, store, load_signer(cfg.signing.key_file))
    (dest,) = cfg.destination
    fwd = Forwarder(store, db, open_uplink(dest, cfg, store, db, None), dest.name, 1,
                    idle_check=0.2, backoff_min=0.1, backoff_max=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(fwd.run(stop))
    try:
        yield Rig(db, store, sealer, fwd)
    finally:
        stop.set()
        fwd.wake()
        await asyncio.wait_for(task, 5)
        await fwd.uplink.stop()
        await db.call(store.close)
        db.shutdown()


def pending(r: Rig) -> Callable[[], bool]:
    return lambda: r.store.outbox.backlog("province")[0] == 0


@pytest.fixture
def sim(tmp_path: Path):
    with ProvinceSim(tmp_path / "sim", {E: (SECRET, PASSWORD)}) as s:
        yield s


def test_records_from_sealed_envelopes(tmp_path: Path, sim: ProvinceSim) -> None:
    async def main() -> None:
        async with rig(write_config(tmp_path, sim)) as r:
            await r.seal("daily", {A: "1140.10", B: "2.50"}, "2026-11-21", 1)
            await r.seal("daily", {A: "", B: "3.00"}, "2026-11-22", 1)  # A had no data
            await r.until(pending(r))
            assert (await r.call(r.store.outbox.last_delivered, "province"))[0] == 2

    asyncio.run(main())
    assert sorted(sim.records()) == [(B, 1, 4, "2026-11-21 00:00:00", "2.50", 1),
                                     (B, 1, 4, "2026-11-22 00:00:00", "3.00", 1),
                                     (A, 1, 4, "2026-11-21 00:00:00", "1140.10", 1)]
    # The configured items, and the comprehensive total (综合能源消费总量) daily and monthly
    # bodies compute under boundary.total_code.
    total = "00-00-0000-080000-00"
    assert sim.items() == {(A, 0), (A, 1), (B, 0), (B, 1), (B, 2), (total, 1), (total, 2)}
    assert sim.counters.tokens == 1 and sim.counters.registrations == 1 and sim.counters.duplicates == 0


def test_a_refusal_is_kept_and_counted_never_resent(tmp_path: Path, sim: ProvinceSim) -> None:
    sim.refuse = {B}

    async def main() -> None:
        async with rig(write_config(tmp_path, sim)) as r:
            await r.seal("daily", {A: "1.00"}, "2026-11-21", 1)
            bad = await r.seal("daily", {B: "2.00"}, "2026-11-21", 1)
            await r.seal("daily", {A: "3.00"}, "2026-11-22", 1)
            await r.until(pending(r))  # the refusal does not hold up the one behind it
            await asyncio.sleep(1.0)  # time for a blind retry, which must not come
            (rej,) = await r.call(r.store.outbox.rejected, "province")
            assert rej[0] == bad and "VALUE REFUSED" in rej[1]
            assert r.fwd.rejected_total == 1 and r.fwd.delivered_total == 2
            assert (await r.call(r.store.state.counters))["rejected_envelopes"] == 1

    asyncio.run(main())
    assert sim.counters.refused == 1
    assert [rec[4] for rec in sim.records()] == ["1.00", "3.00"]


def test_tls_is_verified_and_an_untrusted_platform_gets_nothing(tmp_path: Path, sim: ProvinceSim) -> None:
    async def main() -> None:
        async with rig(write_config(tmp_path, sim, ca=False)) as r:  # system CAs only
            await r.seal("daily", {A: "1.00"}, "2026-11-21", 1)
            await r.until(lambda: r.fwd.failures_total >= 1)
            assert "not trusted" in (r.fwd.last_error or "")
            assert (await r.call(r.store.outbox.backlog, "province"))[0] == 1

    asyncio.run(main())
    assert sim.counters.requests == 0 and sim.records() == []


def test_plain_http_only_with_the_waiver(tmp_path: Path) -> None:
    with ProvinceSim(tmp_path / "sim", {E: (SECRET, PASSWORD)}, tls=False) as sim:
        with pytest.raises(ConfigError, match="allow_plain_http"):
            load_config(write_config(tmp_path, sim, ca=False))

        async def main() -> None:
            async with rig(write_config(tmp_path, sim, "allow_plain_http = true", ca=False)) as r:
                await r.seal("daily", {A: "1.00"}, "2026-11-21", 1)
                await r.until(pending(r))

        asyncio.run(main())
        assert len(sim.records()) == 1


def test_wrong_password_token_refused(tmp_path: Path, sim: ProvinceSim) -> None:
    sim.accounts[E] = (SECRET, "another password")

    async def main() -> None:
        async with rig(write_config(tmp_path, sim)) as r:
            await r.seal("daily", {A: "1.00"}, "2026-11-21", 1)
            await r.until(lambda: r.fwd.failures_total >= 1)
            assert "token refused" in (r.fwd.last_error or "") and "PASSWORD WRONG" in r.fwd.last_error
            sim.accounts[E] = (SECRET, PASSWORD)  # the province resets it; the agent recovers
            await r.until(pending(r))

    asyncio.run(main())
    assert sim.counters.pin_failures >= 1 and len(sim.records()) == 1


def test_500s_and_timeouts_are_retried_with_nothing_twice(tmp_path: Path, sim: ProvinceSim) -> None:
    async def main() -> None:
        async with rig(write_config(tmp_path, sim)) as r:
            await r.seal("daily", {A: "1.00"}, "2026-11-21", 1)
            await r.until(pending(r))
            sim.fail_next(3)
            await r.seal("daily", {A: "2.00"}, "2026-11-22", 1)
            await r.until(pending(r))
            sim.hang = 1.5  # longer than the 1 s timeout
            before = r.fwd.failures_total
            await r.seal("daily", {A: "3.00"}, "2026-11-23", 1)
            await r.until(lambda: r.fwd.failures_total > before)
            assert "timed out" in (r.fwd.last_error or "").lower()
            sim.hang = 0.0
            await r.until(pending(r))

    asyncio.run(main())
    # A post that timed out on our side may have been stored there: then the resend is a
    # duplicate the simulator counts; the value is kept once either way.
    assert [rec[4] for rec in sim.records()] == ["1.00", "2.00", "3.00"]


def test_daily_values_wait_for_the_upload_slot(tmp_path: Path, sim: ProvinceSim) -> None:
    opens = datetime.now(TZ) + timedelta(seconds=3)
    sim.upload_time = opens.strftime("%H:%M:%S")

    async def main() -> None:
        async with rig(write_config(tmp_path, sim)) as r:
            await r.seal("daily", {A: "1.00"}, "2026-11-21", 1)
            await r.seal("interval", {A: "0.25"}, "2026-11-22", 0)  # not held by the slot
            await r.until(lambda: sim.counters.posts >= 1)
            assert [rec[1] for rec in sim.records()] == [0], "interval first, the daily waits"
            assert r.fwd.deferred
            await r.until(pending(r), timeout=15)
            assert datetime.now(TZ) >= opens.replace(microsecond=0)
            assert not r.fwd.deferred
            # A slot the platform says is closed: held back, not rejected.
            sim.slot_closed = True
            await r.seal("monthly", {B: "9.00"}, "2026-11-01", 2)
            await r.until(lambda: sim.counters.slot_refusals >= 1)
            assert r.fwd.deferred and r.fwd.rejected_total == 0

    asyncio.run(main())
    assert sorted(rec[1] for rec in sim.records()) == [0, 1]


def test_items_registered_again_only_when_they_change(tmp_path: Path, sim: ProvinceSim) -> None:
    async def once(extra: str, value: str, day: str) -> None:
        async with rig(write_config(tmp_path, sim, extra)) as r:
            await r.seal("daily", {A: value}, day, 1)
            await r.until(pending(r))

    asyncio.run(once("", "1.00", "2026-11-21"))
    asyncio.run(once("", "2.00", "2026-11-22"))  # restart, same items: not registered again
    assert sim.counters.registrations == 1
    asyncio.run(once("scope = 2", "3.00", "2026-11-23"))  # the items' scope changed
    assert sim.counters.registrations == 2
    assert json.loads(sim.db.execute("SELECT body FROM items LIMIT 1").fetchone()[0])["scope"] == 2


def test_a_password_too_long_for_a_pin_block_stops_the_daemon_with_one_line(
        tmp_path: Path, sim: ProvinceSim) -> None:
    import subprocess
    import sys

    cfg = write_config(tmp_path, sim)
    generate_key(tmp_path / "key.pem")
    (tmp_path / "password").write_text("p" * 15)
    r = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert "destination province: the password has 15 characters; a PIN block holds at most 14" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_oversized_reply_is_not_read_past_its_bound(tmp_path: Path, sim: ProvinceSim) -> None:
    sim.reply_padding = 5000

    async def main() -> None:
        async with rig(write_config(tmp_path, sim, "max_reply_bytes = 1024")) as r:
            await r.seal("daily", {A: "1.00"}, "2026-11-21", 1)
            await r.until(lambda: r.fwd.failures_total >= 1)
            assert "larger than 1024 bytes" in (r.fwd.last_error or "")
            sim.reply_padding = 0
            await r.until(pending(r))

    asyncio.run(main())
    assert len(sim.records()) == 1


def test_mqtt_alone_never_loads_the_provincial_client() -> None:
    import subprocess
    import sys

    code = ("import sys, agent.runtime.app, agent.uplink.factory, agent.commands.run;"
            "print(sorted(m for m in ('agent.uplink.province_https', 'agent.uplink.province_records',"
            " 'cryptography.hazmat.primitives.ciphers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
