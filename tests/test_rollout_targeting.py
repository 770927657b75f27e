"""What rollout targeting reads, on SQLite and PostgreSQL (issue 11): a job result sets the
machine's version at once and an older heartbeat does not undo it; changed machines are
found by one query; entitlements for many machines come from three."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.policy.config import load_policy_data
from careline.coordinator.policy.overrides import PolicyLayers
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import rollouts as rstore
from careline.coordinator.storage import service
from careline.coordinator.storage import updates as ustore
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.schema import agents
from careline.shared.keys import agent_id_for, generate_key, public_bytes

NOW = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


def health(version: str | None, cpu: float = 1.0) -> dict[str, Any]:
    return {"cpu_percent": cpu, "products": [{"name": "acct", "version": version,
                                              "running": False, "pid": None}]}


@pytest.fixture
async def db(database: str) -> AsyncIterator[Database]:
    handle = Database(database)
    await handle.migrate()
    yield handle
    await handle.close()


async def customer(db: Database, name: str) -> int:
    async with db.transaction() as conn:
        return int((await store.add_customer(conn, name, "Asia/Ho_Chi_Minh", NOW)).id)


async def agent(db: Database, customer_id: int, contract_id: int | None = None) -> str:
    key = public_bytes(generate_key())
    async with db.transaction() as conn:
        await store.add_agent(conn, agent_id=agent_id_for(key), customer_id=customer_id,
                              public_key=key, hostname="pc", os="Linux", agent_version="1",
                              now=NOW, contract_id=contract_id)
    return agent_id_for(key)


async def row(db: Database, agent_id: str) -> store.Agent:
    async with db.connect() as conn:
        found = await store.agent_by_id(conn, agent_id)
    assert found is not None
    return found


async def test_a_job_result_sets_the_version_and_an_older_heartbeat_keeps_it(db: Database) -> None:
    pc = await agent(db, await customer(db, "Minh Anh"))
    async with db.transaction() as conn:
        await store.store_heartbeats(conn, [(pc, NOW, health(None))])
    async with db.transaction() as conn:
        await ustore.set_product_version(conn, pc, "acct", "1.0.0", NOW + dt.timedelta(seconds=10))
    stored = await row(db, pc)
    assert stored.products[0]["version"] == "1.0.0"
    assert (stored.health or {})["cpu_percent"] == 1.0  # the rest of the report is kept
    assert stored.targeting_changed_at == stored.versions_at == NOW + dt.timedelta(seconds=10)

    # Received before the result, flushed after it: last_seen moves, the versions do not.
    async with db.transaction() as conn:
        await store.store_heartbeats(conn, [(pc, NOW + dt.timedelta(seconds=5), health(None, 9))])
    stored = await row(db, pc)
    assert stored.products[0]["version"] == "1.0.0"
    assert stored.last_seen == NOW + dt.timedelta(seconds=5)
    # A report received after it is the news.
    async with db.transaction() as conn:
        await store.store_heartbeats(conn, [(pc, NOW + dt.timedelta(seconds=11),
                                             health("1.0.0", 7))])
    assert ((await row(db, pc)).health or {})["cpu_percent"] == 7


async def test_stored_products_reads_only_the_products(db: Database) -> None:
    cid = await customer(db, "Co")
    reported, silent = await agent(db, cid), await agent(db, cid)
    async with db.transaction() as conn:
        await store.store_heartbeats(conn, [(reported, NOW, health("1.0.0"))])
    async with db.connect() as conn:
        found = await rstore.stored_products(conn, [reported, silent, "ag-unknown"])
    assert found == {reported: health("1.0.0")["products"], silent: None}


async def test_a_product_not_in_the_report_yet_is_added(db: Database) -> None:
    pc = await agent(db, await customer(db, "New"))
    async with db.transaction() as conn:
        await ustore.set_product_version(conn, pc, "acct", "2.0", NOW)
    assert (await row(db, pc)).products == [
        {"name": "acct", "version": "2.0", "running": False, "pid": None}]


async def test_targeting_candidates_are_the_changed_machines_outside_the_rollout(
    db: Database,
) -> None:
    cid = await customer(db, "Co")
    other = await customer(db, "Other")
    ids = {name: await agent(db, other if name == "elsewhere" else cid)
           for name in ("old", "changed", "pending", "pending_unknown", "uncovered",
                        "succeeded", "revoked", "elsewhere")}
    async with db.transaction() as conn:
        release = await ustore.add_release(
            conn, product="acct", version="1.1.0", kind="regulation", target="acct/1.1.0",
            sha256="0" * 64, length=1, published_by="t", published_at=NOW)
        rid = await rstore.add_rollout(conn, {
            "release_id": release, "product": "acct", "version": "1.1.0", "kind": "regulation",
            "customer_id": cid, "percents": "100", "status": "running", "started_by": "t",
            "started_at": NOW, "updated_at": NOW})
        in_rollout = {"pending": ("pending", "1.0.0"), "pending_unknown": ("pending", None),
                      "uncovered": ("not_covered", "1.0.0"), "succeeded": ("succeeded", "1.0.0")}
        await rstore.add_machines(conn, [
            {"rollout_id": rid, "agent_id": ids[name], "customer_id": cid, "wave": 0,
             "state": state, "from_version": version, "detail": ""}
            for name, (state, version) in in_rollout.items()])
        await store.revoke_agent(conn, ids["revoked"], NOW)
        await rstore.mark_targeting_changed(conn, NOW - dt.timedelta(hours=1),
                                            agent_ids=[ids["old"]])
        await rstore.mark_targeting_changed(conn, NOW, agent_ids=[
            ids[n] for n in ids if n != "old"])
    async with db.connect() as conn:
        recent = await rstore.targeting_candidates(conn, rid, cid, NOW - dt.timedelta(minutes=1))
        every = await rstore.targeting_candidates(conn, rid, None, None)
    names = {v: k for k, v in ids.items()}
    assert {names[r.id] for r in recent} == {"changed", "pending_unknown", "uncovered"}
    assert {names[r.id] for r in every} == {"old", "changed", "pending_unknown", "uncovered",
                                               "elsewhere"}
    # A contract or maintenance change marks every machine of the customer.
    async with db.transaction() as conn:
        await rstore.mark_targeting_changed(conn, NOW + dt.timedelta(hours=1), customer_id=cid)
        marked = (await conn.execute(sa.select(sa.func.count()).where(
            agents.c.targeting_changed_at == NOW + dt.timedelta(hours=1)))).scalar_one()
    assert marked == 7


@pytest.mark.parametrize("on", [dt.date(2024, 1, 1), dt.date(2025, 1, 1), dt.date(2025, 6, 1),
                                dt.date(2026, 1, 1), dt.date(2027, 1, 1)])
def test_pick_current_contract(on: dt.date) -> None:
    contracts = [service.ContractRow(i, 1, signed_on, 12, None, NOW) for i, signed_on in
                 [(1, dt.date(2025, 1, 1)), (2, dt.date(2026, 1, 1)), (3, dt.date(2026, 1, 1))]]
    expected = {dt.date(2024, 1, 1): 1, dt.date(2025, 1, 1): 1, dt.date(2025, 6, 1): 1,
                dt.date(2026, 1, 1): 3, dt.date(2027, 1, 1): 3}[on]
    current = service.pick_current_contract(contracts, on)
    assert current is not None
    assert current.id == expected
    assert service.pick_current_contract([], on) is None


async def test_entitlements_of_many_machines_in_one_go(db: Database) -> None:
    desk = IncidentDesk(db, PolicyLayers(*load_policy_data(None)), dt.timedelta(minutes=3))
    fresh, lapsed, renewed, nothing = [
        await customer(db, n) for n in ("Fresh", "Lapsed", "Renewed", "Nothing")]
    async with db.transaction() as conn:
        contract = {}
        for cid, signed in ((fresh, dt.date(2026, 11, 1)), (lapsed, dt.date(2023, 1, 1)),
                            (renewed, dt.date(2023, 1, 1))):
            contract[cid] = await service.add_contract(
                conn, customer_id=cid, signed_on=signed, warranty_months=12, machines=None,
                now=NOW)
        await service.add_maintenance(conn, contract_id=contract[renewed],
                                      start=dt.date(2026, 1, 1), end=dt.date(2027, 12, 31),
                                      tier="standard", now=NOW)
    machines = [await agent(db, c) for c in (fresh, lapsed, renewed, nothing)]
    bound = await agent(db, lapsed, contract_id=contract[renewed])  # bound by its token
    async with db.connect() as conn:
        rows = [await store.agent_by_id(conn, m) for m in (*machines, bound)]
        found = await desk.entitlements(conn, [r.coverage_key for r in rows if r],
                                        dt.date(2026, 12, 20))
    labels = [found[m].label for m in (*machines, bound)]
    assert labels == ["warranty", "not_covered", "maintenance:standard", "not_covered",
                      "maintenance:standard"]
    async with db.connect() as conn:  # one machine at a time says the same
        for m in (*machines, bound):
            stored = await store.agent_by_id(conn, m)
            assert stored is not None
            one = await desk.entitlement(conn, stored, dt.date(2026, 12, 20))
            assert one == found[m]
