"""coordinator.storage.views on SQLite and PostgreSQL: the aggregate queries behind the console."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import service, views
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.schema import agents
from tests.test_storage import NOW, new_agent, new_customer


@pytest.fixture
async def db(database: str) -> AsyncIterator[Database]:
    handle = Database(database)
    await handle.migrate()
    yield handle
    await handle.close()


async def incident(db: Database, agent_id: str, customer_id: int, status: str, at: dt.datetime,
                   fees: list[int]) -> int:
    async with db.transaction() as conn:
        incident_id = await service.add_incident(conn, {
            "agent_id": agent_id, "customer_id": customer_id, "kind": "reported", "subject": "",
            "category": "disk", "severity": "high", "status": status, "opened_by": "lan",
            "opened_at": at, "updated_at": at})
        for fee in fees:  # decided again: the latest decision counts
            await service.add_decision(conn, {
                "incident_id": incident_id, "decided_at": at, "action": "onsite_reinstall",
                "covered": fee == 0, "billable": fee > 0, "fee_vnd": fee, "quote_vnd": fee,
                "due_at": at + dt.timedelta(hours=8), "rule": 5, "reasons": [], "facts": {}})
    return incident_id


async def test_fleet_overview_counts_per_customer(db: Database) -> None:
    acme, minh_anh = await new_customer(db, "Acme"), await new_customer(db, "Minh Anh")
    online = await new_agent(db, acme, "pc-1")
    silent = await new_agent(db, acme, "pc-2")
    revoked = await new_agent(db, acme, "pc-3")
    away = await new_agent(db, minh_anh, "kt-1")
    shut = await new_agent(db, minh_anh, "kt-2")
    async with db.transaction() as conn:
        await conn.execute(agents.update().where(agents.c.id == shut).values(  # said goodbye
            connected=False, last_connected_at=NOW - dt.timedelta(hours=9),
            off_at=NOW - dt.timedelta(hours=1)))
        await conn.execute(agents.update().where(agents.c.id == online).values(connected=True, last_seen=NOW))
        await conn.execute(agents.update().where(agents.c.id == silent).values(
            connected=True, last_seen=NOW - dt.timedelta(minutes=10)))
        await store.revoke_agent(conn, revoked, NOW)
    await incident(db, silent, acme, "open", NOW, [0])
    await incident(db, silent, acme, "open", NOW, [0])
    await incident(db, away, minh_anh, "resolved", NOW, [0])
    async with db.connect() as conn:
        rows = await views.fleet_overview(conn, NOW - dt.timedelta(minutes=2))
    got = {r.name: (r.machines, r.online, r.off, r.offline, r.needs_attention,
                       r.open_incidents) for r in rows}
    assert got == {"Acme": (2, 1, 0, 1, 1, 2), "Minh Anh": (2, 0, 1, 1, 0, 0)}


async def test_incident_pages_open_first_with_the_latest_decision(db: Database) -> None:
    acme = await new_customer(db)
    pc = await new_agent(db, acme)
    ids = []
    for n in range(7):
        status = "open" if n % 3 == 0 else "resolved"
        ids.append(await incident(db, pc, acme, status, NOW + dt.timedelta(minutes=n), [800_000, n * 1000]))
    async with db.connect() as conn:
        total, first = await views.incidents_page(conn, open_only=False, customer_id=acme, agent_id=None,
                                                  limit=4, offset=0)
        _, rest = await views.incidents_page(conn, open_only=False, customer_id=acme, agent_id=None,
                                             limit=4, offset=4)
        open_total, open_rows = await views.incidents_page(conn, open_only=True, customer_id=None,
                                                           agent_id=pc, limit=50, offset=0)
        month = await views.incidents_between(conn, acme, NOW, NOW + dt.timedelta(minutes=3))
    shown = first + rest
    assert total == 7
    assert len(shown) == 7
    assert len({r.id for r in shown}) == 7
    assert [r.status for r in shown] == ["open"] * 3 + ["resolved"] * 4
    assert [r.id for r in shown[:3]] == [ids[6], ids[3], ids[0]]  # newest first within each
    assert all(r.fee_vnd == (ids.index(r.id)) * 1000 for r in shown)  # the latest decision
    assert all(r.hostname == "pc-1" and r.customer == "Acme" for r in shown)
    assert open_total == 3
    assert {r.id for r in open_rows} == {ids[0], ids[3], ids[6]}
    assert [r.id for r in month] == ids[:3]
    assert month[0].action == "onsite_reinstall"


async def test_sessions_are_stored_found_with_their_technician_and_pruned(db: Database) -> None:
    from careline.coordinator.storage import sessions as stored
    from careline.coordinator.web.sessions import IDLE, LIFETIME, Session, id_hash

    async with db.transaction() as conn:
        await store.add_technician(conn, "lan", "technician", "tok-lan", NOW)
    cookie, session = Session.new("tok-lan", "vi", "Asia/Ho_Chi_Minh", NOW)
    _, stale = Session.new("tok-lan", "en", "UTC", NOW - LIFETIME - dt.timedelta(minutes=1))
    _, orphan = Session.new("tok-gone", "en", "UTC", NOW)
    async with db.transaction() as conn:
        for s in (session, stale, orphan):
            await stored.add(conn, s.row())
        await stored.update(conn, session.id_hash, flash=[["ok", "visits.assign: status assigned"]])
    async with db.connect() as conn:
        row = await stored.get_with_technician(conn, id_hash(cookie))
        assert await stored.get_with_technician(conn, id_hash("not-a-session")) is None
        ghost = await stored.get_with_technician(conn, orphan.id_hash)
    assert row is not None
    assert (row["name"], row["role"], row["revoked_at"]) == ("lan", "technician", None)
    assert Session.from_row(row).flash == [["ok", "visits.assign: status assigned"]]
    assert ghost is not None
    assert ghost["name"] is None
    async with db.transaction() as conn:
        await stored.prune(conn, NOW - IDLE, NOW - LIFETIME)
        assert await stored.get_with_technician(conn, stale.id_hash) is None
        await stored.delete_for_token(conn, "tok-lan")
        assert await stored.get_with_technician(conn, session.id_hash) is None
        assert await stored.get_with_technician(conn, orphan.id_hash) is not None


async def test_rollouts_touching_a_customer_count_only_its_machines(db: Database) -> None:
    from careline.coordinator.storage.schema import releases, rollout_machines, rollouts

    acme, other = await new_customer(db, "Acme"), await new_customer(db, "Other")
    pcs = [await new_agent(db, acme, f"pc-{i}") for i in range(3)]
    theirs = await new_agent(db, other, "x-1")
    async with db.transaction() as conn:
        await conn.execute(releases.insert().values(
            id=1, product="KeToan", version="2026.2", kind="regulation", target="t", sha256="0" * 64,
            length=1, published_by="rm", published_at=NOW))
        for rid in (1, 2):
            await conn.execute(rollouts.insert().values(
                id=rid, release_id=1, product="KeToan", version="2026.2", kind="regulation",
                percents="5,25,100", status="running", started_by="lan", started_at=NOW, updated_at=NOW))
        states = ["succeeded", "failed", "not_covered"]
        await conn.execute(rollout_machines.insert(), [
            {"rollout_id": 1, "agent_id": pc, "customer_id": acme, "wave": 0, "state": state}
            for pc, state in zip(pcs, states, strict=True)] + [
            {"rollout_id": 2, "agent_id": theirs, "customer_id": other, "wave": 0, "state": "succeeded"}])
    async with db.connect() as conn:
        mine = await views.customer_rollouts(conn, acme)
    assert [(r.id, r.machines, r.succeeded, r.failed) for r in mine] == [(1, 2, 1, 1)]
