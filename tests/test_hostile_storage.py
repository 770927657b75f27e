"""Storage against a hostile agent (issue 12), on SQLite and PostgreSQL: exact-id lookups
that no hostname can hijack, per-agent budgets for events and diagnostics, the open-incident
count the per-kind cap uses, and an unknown agent id that costs one query, not one each."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from careline.coordinator.agent_keys import AgentKeys
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import service
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.schema import events
from careline.shared.errors import NotFound
from careline.shared.keys import agent_id_for, generate_key, looks_like_agent_id, public_bytes
from tests.test_storage import NOW, new_agent, new_customer


@pytest.fixture
async def db(database: str) -> AsyncIterator[Database]:
    handle = Database(database)
    await handle.migrate()
    yield handle
    await handle.close()


def test_agent_id_shape() -> None:
    for _ in range(50):
        assert looks_like_agent_id(agent_id_for(public_bytes(generate_key())))
    assert looks_like_agent_id("AG-ABCDEFGHIJKLMNOP")
    for name in ("ag-ketoan", "KETOAN-PC", "ag-abcdefghijklmnop1", "ag-abcdefghijklmno8", ""):
        assert not looks_like_agent_id(name)


async def test_hostnames_equal_to_an_id_never_stand_for_that_agent(db: Database) -> None:
    """The issue's trigger: machines named like another agent's id. Internal code asks by
    exact id; a technician's ref matches the id first and never a hostname shaped like one."""
    cid = await new_customer(db)
    victim = await new_agent(db, cid, "pc-victim")
    impostors = [await new_agent(db, cid, victim) for _ in range(3)]
    async with db.connect() as conn:
        assert (await store.get_agent_exact(conn, victim)).id == victim
        assert (await store.get_agent(conn, victim)).id == victim
        for impostor in impostors:
            assert (await store.get_agent_exact(conn, impostor)).hostname == victim
        with pytest.raises(NotFound):
            await store.get_agent_exact(conn, victim[:8])  # no prefixes
        with pytest.raises(NotFound):
            await store.get_agent_exact(conn, "pc-victim")  # no hostnames
        assert (await store.get_agent(conn, "pc-victim")).id == victim
    other = agent_id_for(public_bytes(generate_key()))
    await new_agent(db, cid, other)  # hostname shaped like an id that is nobody's
    async with db.connect() as conn:
        with pytest.raises(NotFound):
            await store.get_agent(conn, other)


async def add_events(db: Database, agent_id: str, count: int, received: dt.datetime) -> None:
    async with db.transaction() as conn:
        await conn.execute(events.insert(), [
            {"agent_id": agent_id, "seq": seq, "kind": "update_step", "at": received,
             "received_at": received, "data": {"n": seq}} for seq in range(count)])


async def test_event_budget_keeps_each_agents_newest_within_retention(db: Database) -> None:
    cid = await new_customer(db)
    noisy, quiet, old = [await new_agent(db, cid, f"pc-{n}") for n in range(3)]
    await add_events(db, noisy, 30, NOW)
    await add_events(db, quiet, 5, NOW)
    await add_events(db, old, 4, NOW - dt.timedelta(days=500))
    async with db.transaction() as conn:
        removed = await store.prune_events(conn, 10, NOW - dt.timedelta(days=400))
    assert removed == 20 + 4
    async with db.connect() as conn:
        kept = await store.list_events(conn, noisy, limit=100)
        assert [e["seq"] for e in kept] == list(range(29, 19, -1))  # the newest ten
        assert len(await store.list_events(conn, quiet, limit=100)) == 5
        assert await store.list_events(conn, old, limit=100) == []
    async with db.transaction() as conn:
        assert await store.prune_events(conn, 10, NOW - dt.timedelta(days=400)) == 0


async def test_diagnostics_budget_and_open_incident_count(db: Database) -> None:
    cid = await new_customer(db)
    a, b = await new_agent(db, cid, "pc-a"), await new_agent(db, cid, "pc-b")
    async with db.transaction() as conn:
        ids = [await service.add_diagnostics(conn, agent_id=agent, incident_id=None,
                                             requested_by="t", size=2, bundle={"n": n}, now=NOW)
               for n in range(6) for agent in (a, b)]
        assert await service.prune_diagnostics(conn, 4) == 4
    async with db.connect() as conn:
        left = {r.id for agent in (a, b) for r in await service.list_diagnostics(conn, agent)}
    assert left == set(ids[4:])  # each agent's four newest

    async with db.transaction() as conn:
        for subject, status in (("/a", "open"), ("/b", "open"), ("/c", "resolved")):
            await service.add_incident(conn, {
                "agent_id": a, "customer_id": cid, "kind": "disk_full", "subject": subject,
                "category": "config", "severity": "medium", "status": status,
                "opened_by": "agent", "opened_at": NOW, "updated_at": NOW, "detail": ""})
        assert await service.count_open_incidents(conn, a, "disk_full") == 2
        assert await service.count_open_incidents(conn, a, "disk_failing") == 0
        assert await service.count_open_incidents(conn, b, "disk_full") == 0


async def test_unknown_agent_id_costs_one_query(db: Database) -> None:
    keys = AgentKeys(db)
    await keys.load(NOW)
    statements: list[str] = []
    sa.event.listen(db.engine.sync_engine, "before_cursor_execute",
                    lambda *args: statements.append(args[2]))
    stranger = agent_id_for(public_bytes(generate_key()))
    for _ in range(20):
        assert await keys.lookup(stranger) == "unknown"
    assert len([s for s in statements if "agents" in s]) == 1
    # Enrolled here afterwards: known at once.
    keys.add(stranger, b"k" * 32, 1)
    assert (await keys.lookup(stranger)) != "unknown"
