"""coordinator.enrollment on SQLite and PostgreSQL: reinstalls keep their machine, clones
are only proposed, and a contract's machine limit counts machines, not keys."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from careline.coordinator.enrollment import candidates, enroll_machine, mark_distinct, replace
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import service
from careline.coordinator.storage.db import Database
from careline.shared import protocol as p
from careline.shared.errors import ConfigError, Conflict, ProtocolError
from careline.shared.hardware import hashed
from careline.shared.keys import agent_id_for, generate_key, public_bytes

NOW = dt.datetime(2026, 3, 3, 2, 0, tzinfo=dt.UTC)
OFFLINE_AFTER = dt.timedelta(seconds=90)
PC1 = hashed({"uuid": "uuid-1", "serial": "serial-1", "disk": "disk-1", "mac": "aa:01"})
PC2 = hashed({"uuid": "uuid-2", "serial": "serial-2", "disk": "disk-2", "mac": "aa:02"})
CLONE_OF_2 = hashed({"uuid": "uuid-3", "serial": "serial-3", "disk": "disk-2", "mac": "aa:03"})


@pytest.fixture
async def db(database: str) -> AsyncIterator[Database]:
    handle = Database(database)
    await handle.migrate()
    yield handle
    await handle.close()


def request(hardware: dict[str, str], hostname: str = "pc", replaces: str = "") -> p.EnrollRequest:
    return p.EnrollRequest(token="", public_key=public_bytes(generate_key()), hostname=hostname,
                           os="Windows 11", agent_version="1.0", hardware=hardware,
                           replaces=replaces)


async def setup(db: Database, machines: int | None = None) -> store.EnrollmentGrant:
    async with db.transaction() as conn:
        customer = await store.add_customer(conn, "Minh Anh", "Asia/Ho_Chi_Minh", NOW)
        contract = await service.add_contract(
            conn, customer_id=customer.id, signed_on=NOW.date(), warranty_months=12,
            machines=machines, now=NOW)
    return store.EnrollmentGrant(id=1, customer_id=customer.id, contract_id=contract, site_id=None)


async def enroll(db: Database, token: store.EnrollmentGrant, req: p.EnrollRequest,
                 now: dt.datetime = NOW) -> str:
    async with db.transaction() as conn:
        return (await enroll_machine(conn, token, req, now, OFFLINE_AFTER)).machine_id


async def test_reinstall_is_the_same_machine_with_its_history_and_one_seat(db: Database) -> None:
    token = await setup(db, machines=2)
    first = request(PC1, "ketoan-1")
    machine = await enroll(db, token, first)
    assert machine == agent_id_for(first.public_key)
    async with db.transaction() as conn:
        await store.store_events(conn, [(machine, seq, "x", NOW, {}) for seq in (1, 2)], NOW)
        incident = await service.add_incident(conn, {
            "agent_id": machine, "customer_id": token.customer_id, "kind": "reported",
            "category": "virus", "severity": "critical", "status": "open",
            "opened_by": "lan", "opened_at": NOW, "updated_at": NOW})
        visit = await service.add_visit(conn, {
            "incident_id": incident, "agent_id": machine, "customer_id": token.customer_id,
            "action": "onsite_reinstall", "fee_vnd": 500_000, "due_at": NOW, "status": "open",
            "created_at": NOW})

    second = request(PC1, "ketoan-1-new")  # same PC, new OS, new key
    later = NOW + dt.timedelta(days=1)
    assert await enroll(db, token, second, later) == machine
    async with db.connect() as conn:
        rows = await store.list_agents(conn)
        assert [r.id for r in rows] == [machine]  # one machine, one seat
        row = rows[0]
        assert bytes(row.public_key) == second.public_key
        assert row.key_id == agent_id_for(second.public_key)
        assert row.hostname == "ketoan-1-new"
        assert row.key_changed_at == later
        hello = await store.agent_for_hello(conn, row.key_id)
        assert hello is not None
        assert hello.id == machine
        keys = await store.agent_keys(conn)
        assert keys[machine][0] == second.public_key == keys[row.key_id][0]
        assert [i.id for i in await service.list_incidents(conn, agent_id=machine)] == [
            incident]
        done = await service.get_visit(conn, visit)
        assert done.status == "completed"
        assert "re-enrolled" in (done.note or "")
        audit = await store.list_audit(conn)
        assert audit[0]["action"] == "agent.relink"
        assert audit[0]["detail"]["old_key"] == machine
    async with db.transaction() as conn:  # the new agent's outbox starts again at seq 1
        assert await store.store_events(conn, [(machine, 1, "y", later, {})], later) == {
            (machine, 1)}
        assert len(await store.list_events(conn, machine)) == 3


async def test_clone_or_online_match_is_proposed_not_merged(db: Database) -> None:
    token = await setup(db)
    minute = dt.timedelta(minutes=1)
    pc2 = await enroll(db, token, request(PC2, "pc2"))
    clone = await enroll(db, token, request(CLONE_OF_2, "pc3"), NOW + minute)
    assert clone != pc2
    async with db.transaction() as conn:
        await store.store_presence(conn, {pc2: (True, NOW + minute, "1.0")})
    twin = await enroll(db, token, request(PC2, "pc2-twin"), NOW + 2 * minute)  # pc2 online
    assert twin not in (pc2, clone)
    async with db.connect() as conn:
        found = await candidates(conn)
        assert {(c["old"], c["new"], c["strength"], c["matching"]) for c in found} == {
            (pc2, clone, "weak", "disk"),
            (pc2, twin, "strong", "uuid, serial, disk, mac"),
            (clone, twin, "weak", "disk"),
        }
        assert "proposed" in (await store.list_audit(conn))[0]["detail"]["note"]
    async with db.transaction() as conn:  # the technician: pc3 is another PC, a cloned image
        await mark_distinct(conn, await store.get_agent(conn, clone),
                            await store.get_agent(conn, pc2), actor="lan", now=NOW)
        with pytest.raises(ConfigError, match="not distinct from itself"):
            await mark_distinct(conn, await store.get_agent(conn, pc2),
                                await store.get_agent(conn, pc2), actor="lan", now=NOW)
    async with db.connect() as conn:
        assert {(c["old"], c["new"]) for c in await candidates(conn)} == {
            (pc2, twin), (clone, twin)}
        assert (await store.list_audit(conn))[0]["action"] == "agent.distinct"


async def test_contract_limit_counts_machines_refuses_new_accepts_reinstall(db: Database) -> None:
    token = await setup(db, machines=2)
    await enroll(db, token, request(PC1))
    await enroll(db, token, request(PC2))
    with pytest.raises(Conflict, match="contract 1 allows 2 machines and has 2"):
        await enroll(db, token, request(CLONE_OF_2))
    assert await enroll(db, token, request(PC1))  # the reinstall takes no new seat
    async with db.transaction() as conn:
        assert len(await store.list_agents(conn)) == 2
        await store.revoke_agent(conn, (await store.list_agents(conn))[1].id, NOW)
    assert await enroll(db, token, request(hashed({"uuid": "u9", "disk": "d9"})))


async def test_technician_names_the_machine_and_replace_links_a_proposal(db: Database) -> None:
    token = await setup(db)
    pc2 = await enroll(db, token, request(PC2, "pc2"))
    async with db.transaction() as conn:
        await store.store_presence(conn, {pc2: (True, NOW, "1.0")})
    # On site, the technician knows: a new PC with nothing in common, replacing pc2.
    assert await enroll(db, token, request(PC1, "pc2-new", replaces="pc2")) == pc2
    clone = await enroll(db, token, request(CLONE_OF_2, "pc3"))
    async with db.transaction() as conn:
        old, new = await store.get_agent(conn, pc2), await store.get_agent(conn, clone)
        await replace(conn, old, new, actor="lan", now=NOW)
    async with db.connect() as conn:
        linked = await store.get_agent(conn, pc2)
        retired = await store.agent_by_id(conn, clone)
        assert bytes(linked.public_key) == bytes(new.public_key)
        assert linked.key_id == clone  # the agent says hello as `clone`: it is pc2 now
        hello = await store.agent_for_hello(conn, clone)
        assert hello is not None
        assert hello.id == pc2
        assert retired is not None
        assert retired.revoked_at is not None
        assert retired.replaced_by == pc2
        assert await candidates(conn) == []
    async with db.transaction() as conn:
        current, again = await store.get_agent(conn, pc2), await store.agent_by_id(conn, clone)
        assert again is not None
        with pytest.raises(Conflict, match="revoked"):
            await replace(conn, current, again, actor="lan", now=NOW)
        with pytest.raises(ConfigError, match="cannot replace itself"):
            await replace(conn, linked, linked, actor="lan", now=NOW)


async def test_refusals(db: Database) -> None:
    token = await setup(db)
    async with db.transaction() as conn:
        other = await store.add_customer(conn, "Hoa Mai", "Asia/Ho_Chi_Minh", NOW)
    theirs = await enroll(db, dataclasses.replace(token, customer_id=other.id, contract_id=None),
                          request(PC1, "theirs"))
    with pytest.raises(ConfigError, match="belongs to another customer"):
        await enroll(db, token, request(PC1, replaces=theirs))
    mine = await enroll(db, token, request(PC1, "mine"))  # other customers' PCs never match
    assert mine != theirs
    with pytest.raises(ProtocolError, match="hardware"):
        await enroll(db, token, request({"uuid": "not-a-hash"}))


async def test_other_processes_learn_of_new_enrollments_without_a_query_each(db: Database) -> None:
    """Scale-out: agents enrolled through another process are in this one's cache after its
    next refresh, so a failover's thousands of hellos cost no lookup each."""
    from careline.coordinator.agent_keys import AgentKey, AgentKeys

    token = await setup(db)
    keys = AgentKeys(db)
    await keys.load(NOW)
    assert len(keys) == 0
    elsewhere = await enroll(db, token, request(PC1, "pc1"))
    revoked = await enroll(db, token, request(CLONE_OF_2, "pc2"))
    async with db.transaction() as conn:
        await store.revoke_agent(conn, revoked, NOW)
    assert await keys.refresh(NOW + dt.timedelta(seconds=2)) == ([revoked], [])
    assert len(keys) == 1
    key = await keys.lookup(elsewhere)
    assert isinstance(key, AgentKey)
    assert key.machine_id == elsewhere
    assert await keys.lookup(revoked) == "revoked"


async def test_other_processes_learn_of_a_rekey_once(db: Database) -> None:
    """Scale-out: a process that did not link the reinstall drops the old key from its cache
    and has the machine's connections say hello again, once; the retired agent of a
    technician's link is not treated as revoked (it lives on as the machine)."""
    from careline.coordinator.agent_keys import AgentKey, AgentKeys

    token = await setup(db)
    keys = AgentKeys(db)
    await keys.load(NOW)
    old = await enroll(db, token, request(PC1, "pc1"))
    await keys.lookup(old)
    clone = await enroll(db, token, request(CLONE_OF_2, "pc3"))
    later = NOW + dt.timedelta(seconds=5)
    fresh = request(PC1, "pc1-new")
    assert await enroll(db, token, fresh, later) == old  # reinstalled, via another process
    revoked, rekeyed = await keys.refresh(later)
    assert revoked == []
    assert rekeyed == [old, agent_id_for(fresh.public_key)]
    assert (await keys.lookup(old)).public_key == fresh.public_key  # type: ignore[union-attr]
    assert await keys.refresh(later + dt.timedelta(seconds=2)) == ([], [])  # once
    async with db.transaction() as conn:
        await replace(conn, await store.get_agent(conn, old), await store.get_agent(conn, clone),
                      actor="lan", now=later + dt.timedelta(seconds=3))
    revoked, rekeyed = await keys.refresh(later + dt.timedelta(seconds=4))
    assert revoked == []
    assert rekeyed == [old, clone]
    key = await keys.lookup(clone)  # the clone's agent says hello with its own id
    assert isinstance(key, AgentKey)  # neither "revoked" nor "unknown"
    assert key.machine_id == old
