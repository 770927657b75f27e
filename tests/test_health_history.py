"""Machine health history: which reports become samples (pure), what a sample keeps, the
sparkline, and the samples' storage and retention on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator

import pytest

from careline.coordinator.health_history import SAMPLE_EVERY, Sampler, sample_of
from careline.coordinator.storage import health
from careline.coordinator.storage.db import Database
from careline.coordinator.web.jinja import sparkline
from tests.test_storage import NOW, new_agent, new_customer

GiB = 1 << 30
HEALTH = {
    "cpu_percent": 12.5, "memory_total": 8 * GiB, "memory_used": 6 * GiB, "memory_percent": 75.0,
    "disks": [{"mount": "C:\\", "total": 100 * GiB, "used": 40 * GiB, "percent": 40.0},
              {"mount": "D:\\", "total": 10 * GiB, "used": 9 * GiB, "percent": 90.0},
              {"mount": "E:\\", "total": 0, "used": 0, "percent": 0.0}],
    "boot_time": 1_700_000_000, "uptime": 5.0, "os": "Windows", "agent_version": "1.0",
    "products": [], "problems": [{"kind": "disk_full", "subject": "D:\\", "detail": "90% used"}],
}


def test_a_sample_keeps_the_fullest_disk_and_the_problems_by_kind() -> None:
    assert sample_of(HEALTH) == {
        "cpu_percent": 12.5, "memory_percent": 75.0, "disk_free_percent": 10.0, "disk_free": GiB,
        "problems": [{"kind": "disk_full", "subject": "D:\\"}]}
    bare = sample_of({**HEALTH, "disks": [], "problems": []})
    assert (bare["disk_free_percent"], bare["disk_free"], bare["problems"]) == (None, None, [])


def test_an_agent_is_sampled_once_per_period_whatever_its_heartbeat_rate() -> None:
    sampler = Sampler()
    start = NOW
    taken = []
    for second in range(0, 3 * 3600, 7):  # a heartbeat every 7 s for three hours
        at = start + dt.timedelta(seconds=second)
        due = sampler.due({"a": at, "b": at + dt.timedelta(seconds=3)})
        sampler.taken((agent_id, at) for agent_id in due)
        taken += [(agent_id, at) for agent_id in due]
    for agent_id in ("a", "b"):
        times = [at for a, at in taken if a == agent_id]
        assert len(times) == 12  # 180 minutes / 15
        assert all(later - earlier >= SAMPLE_EVERY for earlier, later in itertools.pairwise(times))
        assert all(later - earlier < SAMPLE_EVERY + dt.timedelta(seconds=7)
                   for earlier, later in itertools.pairwise(times))


@pytest.mark.parametrize("offset", [dt.timedelta(seconds=s) for s in (-3600, -1, 0, 1, 899, 900, 901)])
def test_due_after_the_period_never_sampled_or_the_clock_went_back(offset: dt.timedelta) -> None:
    sampler = Sampler()
    assert sampler.due({"a": NOW}) == ["a"]  # never sampled (or this process just started)
    sampler.taken([("a", NOW)])
    expected = ["a"] if offset < dt.timedelta(0) or offset >= SAMPLE_EVERY else []
    assert sampler.due({"a": NOW + offset}) == expected
    assert sampler.last == {"a": NOW}  # asking is not taking: a failed write loses nothing


def test_sparkline_scales_percentages_to_the_box() -> None:
    assert sparkline([0.0, 50.0, 100.0], 200, 40) == "0.0,40.0 100.0,20.0 200.0,0.0"
    assert sparkline([25.0], 200, 40) == "0,30.0 200,30.0"
    assert sparkline([150.0, None, -5.0], 200, 40) == "0.0,0.0 200.0,40.0"
    assert sparkline([]) == ""


@pytest.fixture
async def db(database: str) -> AsyncIterator[Database]:
    handle = Database(database)
    await handle.migrate()
    yield handle
    await handle.close()


async def test_samples_are_stored_listed_oldest_first_and_pruned(db: Database) -> None:
    acme = await new_customer(db)
    pc, other = await new_agent(db, acme, "pc-1"), await new_agent(db, acme, "pc-2")
    hours = [NOW - dt.timedelta(hours=h) for h in (30, 20, 2, 1)]
    async with db.transaction() as conn:
        await health.store_samples(conn, [(pc, at, sample_of(HEALTH)) for at in hours])
        await health.store_samples(conn, [(other, NOW, sample_of({**HEALTH, "cpu_percent": 99.0}))])
        await health.store_samples(conn, [])
    async with db.connect() as conn:
        day = await health.list_samples(conn, pc, NOW - dt.timedelta(hours=24))
        newest = await health.list_samples(conn, pc, NOW - dt.timedelta(days=2), limit=2)
    assert [s["at"] for s in day] == hours[1:]
    assert day[0] == {"at": hours[1], **sample_of(HEALTH)}
    assert [s["at"] for s in newest] == hours[2:]
    async with db.transaction() as conn:
        assert await health.prune_samples(conn, NOW - dt.timedelta(hours=24)) == 1
    async with db.connect() as conn:
        assert len(await health.list_samples(conn, pc, NOW - dt.timedelta(days=2))) == 3
        assert len(await health.list_samples(conn, other, NOW - dt.timedelta(days=2))) == 1
