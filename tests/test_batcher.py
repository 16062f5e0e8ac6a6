"""CommitBatcher: one commit per tick, the watchdog hears only of committed buses."""

from __future__ import annotations

import asyncio

import pytest

from agent.runtime.batcher import CommitBatcher
from buffer.store import MeterStatus
from drivers.base import Reading


def readings(meter: str, n: int = 2) -> list[Reading]:
    return [Reading(meter, f"p{i}", 1_000, float(i)) for i in range(n)]


class Recorder:
    def __init__(self, delay: float = 0.0, fail: BaseException | None = None) -> None:
        self.delay = delay
        self.fail = fail
        self.commits: list[list[Reading]] = []
        self.committed: list[set[str]] = []
        self.failed: list[BaseException] = []

    async def commit(self, rows: list[Reading], statuses: list[MeterStatus]) -> None:
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.commits.append(rows)

    def batcher(self, window: float = 0.05) -> CommitBatcher:
        return CommitBatcher(self.commit, window, committed=self.committed.append, failed=self.failed.append)


def test_buses_of_one_tick_share_one_commit_and_beat_only_after_it() -> None:
    async def body() -> None:
        r = Recorder()
        b = r.batcher()
        b.add("b1", readings("m1"))
        b.add("b2", readings("m2"))
        assert r.committed == []  # nothing is durable yet
        await asyncio.sleep(0.15)
        assert [len(c) for c in r.commits] == [4]
        assert r.committed == [{"b1", "b2"}]

    asyncio.run(body())


def test_samples_arriving_during_a_commit_go_into_the_next_one() -> None:
    async def body() -> None:
        r = Recorder(delay=0.1)
        b = r.batcher(window=0.01)
        b.add("b1", readings("m1"))
        await asyncio.sleep(0.05)  # the first commit is running
        b.add("b2", readings("m2", 3))
        await asyncio.sleep(0.3)
        assert [len(c) for c in r.commits] == [2, 3]
        assert r.committed == [{"b1"}, {"b2"}]

    asyncio.run(body())


def test_flush_commits_what_is_queued_and_waits_for_it() -> None:
    async def body() -> None:
        r = Recorder(delay=0.05)
        b = r.batcher(window=10.0)  # the timer would never fire within the test
        b.add("b1", readings("m1"))
        await b.flush()
        assert [len(c) for c in r.commits] == [2] and r.committed == [{"b1"}]
        assert b.queued == 0
        await b.flush()  # nothing queued: returns at once
        assert len(r.commits) == 1

    asyncio.run(body())


def test_a_failed_commit_is_reported_and_no_bus_beats() -> None:
    async def body() -> None:
        r = Recorder(fail=OSError("disk gone"))
        b = r.batcher(window=0.01)
        b.add("b1", readings("m1"))
        await asyncio.sleep(0.1)
        assert r.committed == [] and [str(e) for e in r.failed] == ["disk gone"]
        b.add("b1", readings("m1"))
        with pytest.raises(OSError, match="disk gone"):
            await b.flush()

    asyncio.run(body())
