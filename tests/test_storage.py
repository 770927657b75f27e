"""coordinator.storage on SQLite and PostgreSQL: migrations, fleet queries, token spending."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator
from importlib import resources

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from careline.coordinator.storage import fleet as store
from careline.coordinator.storage.db import Database, async_url
from careline.coordinator.storage.schema import UTCDateTime, agents, customers, enrollment_tokens, events
from careline.shared.errors import AuthError, ConfigError, Conflict, NotFound
from careline.shared.keys import agent_id_for, generate_key, public_bytes, token_hash

NOW = dt.datetime(2025, 3, 1, 8, 30, 15, 123456, tzinfo=dt.UTC)
HCM = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.fixture
async def db(database: str) -> AsyncIterator[Database]:
    handle = Database(database)
    await handle.migrate()
    yield handle
    await handle.close()


async def new_customer(db: Database, name: str = "Acme") -> int:
    async with db.transaction() as conn:
        return int((await store.add_customer(conn, name, "Asia/Ho_Chi_Minh", NOW)).id)


async def new_agent(db: Database, customer_id: int, hostname: str = "pc-1",
                    agent_id: str | None = None) -> str:
    key = public_bytes(generate_key())
    agent_id = agent_id or agent_id_for(key)
    async with db.transaction() as conn:
        await store.add_agent(
            conn, agent_id=agent_id, customer_id=customer_id, public_key=key,
            hostname=hostname, os="Linux", agent_version="1.0", now=NOW,
        )
    return agent_id


async def new_token(db: Database, customer_id: int, secret: str, uses: int = 1,
                    expires_at: dt.datetime | None = None) -> None:
    async with db.transaction() as conn:
        await store.add_enrollment_token(
            conn, token_hash=token_hash(secret), customer_id=customer_id, uses_allowed=uses,
            expires_at=expires_at or NOW + dt.timedelta(hours=1), created_by="admin", now=NOW,
        )


async def spend(db: Database, secret: str, now: dt.datetime = NOW) -> store.EnrollmentGrant:
    async with db.transaction() as conn:
        return await store.spend_enrollment_token(conn, token_hash(secret), now)


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(resources.files("careline.coordinator") / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


# ----------------------------------------------------------------------------- database
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://h/db", "postgresql+asyncpg://h/db"),
        ("postgres://h/db", "postgresql+asyncpg://h/db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_async_url(url: str, expected: str) -> None:
    assert async_url(url) == expected


@pytest.mark.parametrize("url", ["mysql://h/db", "x.db", "", "sqlite://", "postgresql+psycopg://h/d"])
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported database URL"):
        async_url(url)


async def test_migrate_twice_is_idempotent_and_keeps_data(database: str) -> None:
    db = Database(database)
    try:
        await db.migrate()
        cid = await new_customer(db)
        await db.migrate()
        async with db.connect() as conn:
            version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
            names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            assert (await store.get_customer(conn, cid)).name == "Acme"
        assert version == [(head_revision(),)]
        assert {"customers", "technicians", "enrollment_tokens", "agents", "events", "audit"} <= names
    finally:
        await db.close()
    # A second process (new handle) migrating the same database changes nothing either.
    again = Database(database)
    try:
        await again.migrate()
        async with again.connect() as conn:
            assert [c.name for c in await store.list_customers(conn)] == ["Acme"]
    finally:
        await again.close()


# ----------------------------------------------------------------------------- customers
# Each PostgreSQL test costs a fresh database, so related checks share one test.
async def test_customers_add_list_get_conflict_and_rollback(db: Database) -> None:
    async with db.transaction() as conn:
        acme = await store.add_customer(conn, "Acme", "Asia/Ho_Chi_Minh", NOW)
        beta = await store.add_customer(conn, "Beta Ltd", "UTC", NOW)
    assert acme.id != beta.id
    async with db.connect() as conn:
        listed = await store.list_customers(conn)
        assert [c.name for c in listed] == ["Acme", "Beta Ltd"]
        expected = {"id": acme.id, "name": "Acme", "timezone": "Asia/Ho_Chi_Minh",
                    "created_at": NOW}
        assert {k: getattr(listed[0], k) for k in expected} == expected
        assert (await store.get_customer(conn, acme.id)).name == "Acme"
        assert (await store.get_customer(conn, str(beta.id))).name == "Beta Ltd"
        assert (await store.get_customer(conn, "Beta Ltd")).id == beta.id
        with pytest.raises(NotFound, match="no customer"):
            await store.get_customer(conn, 9999)
        with pytest.raises(NotFound):
            await store.get_customer(conn, "acme")  # names are exact

    # A duplicate name is a Conflict, and the failed transaction leaves nothing behind.
    with pytest.raises(Conflict, match="already exists"):  # noqa: PT012 - the transaction's scope
        async with db.transaction() as conn:
            await store.add_customer(conn, "Zeta", "UTC", NOW)
            await store.add_customer(conn, "Acme", "UTC", NOW)
    # Any exception rolls the transaction back.
    with pytest.raises(RuntimeError):  # noqa: PT012 - the transaction's whole scope is what fails
        async with db.transaction() as conn:
            await store.add_customer(conn, "Ghost", "UTC", NOW)
            raise RuntimeError("boom")
    async with db.connect() as conn:
        assert [c.name for c in await store.list_customers(conn)] == ["Acme", "Beta Ltd"]
    # The pool is still usable after the failed transactions.
    assert await new_customer(db, "Other") > beta.id


# ----------------------------------------------------------------------------- enrollment tokens
async def test_token_spends_and_every_refusal(db: Database) -> None:
    cid = await new_customer(db)
    await new_token(db, cid, "cle_three", uses=3)
    for _ in range(3):
        assert (await spend(db, "cle_three")).customer_id == cid
    for _ in range(2):
        with pytest.raises(AuthError, match="used up"):
            await spend(db, "cle_three")

    await new_token(db, cid, "cle_old", uses=5, expires_at=NOW)
    with pytest.raises(AuthError, match="expired"):
        await spend(db, "cle_old", now=NOW)  # expiry is exclusive
    with pytest.raises(AuthError, match="expired"):
        await spend(db, "cle_old", now=NOW + dt.timedelta(seconds=1))
    assert (await spend(db, "cle_old", now=NOW - dt.timedelta(microseconds=1))).customer_id == cid

    # Expiry compares instants: 09:00 in Hanoi is 02:00 UTC, so 03:00 UTC is too late.
    await new_token(db, cid, "cle_tz", expires_at=dt.datetime(2025, 3, 1, 9, 0, tzinfo=HCM))
    with pytest.raises(AuthError, match="expired"):
        await spend(db, "cle_tz", now=dt.datetime(2025, 3, 1, 3, 0, tzinfo=dt.UTC))

    with pytest.raises(AuthError, match="not known"):
        await spend(db, "cle_fake")
    with pytest.raises(AuthError, match="not known"):
        await spend(db, token_hash("cle_three"))  # the stored hash is not the token

    with pytest.raises(Conflict):
        await new_token(db, cid, "cle_three")  # same hash twice

    async with db.connect() as conn:
        uses = dict((await conn.execute(
            sa.select(enrollment_tokens.c.token_hash, enrollment_tokens.c.uses))).all())
    assert uses == {token_hash("cle_three"): 3, token_hash("cle_old"): 1, token_hash("cle_tz"): 0}


async def test_concurrent_spends_succeed_exactly_uses_allowed_times(db: Database) -> None:
    cid = await new_customer(db)
    await new_token(db, cid, "cle_rush", uses=5)

    async def attempt() -> str:
        try:
            await spend(db, "cle_rush")
        except AuthError as exc:
            return str(exc)
        return "ok"

    outcomes = await asyncio.gather(*(attempt() for _ in range(20)))
    assert outcomes.count("ok") == 5, outcomes
    assert all("used up" in o for o in outcomes if o != "ok"), outcomes
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(enrollment_tokens.c.uses))).scalar_one() == 5


# ----------------------------------------------------------------------------- agents
async def test_agents_add_list_and_get_by_id_prefix_hostname(db: Database) -> None:
    cid = await new_customer(db)
    beta = await new_customer(db, "Beta")
    a = await new_agent(db, cid, "pc-1", agent_id="ag-aaaa1111")
    b = await new_agent(db, cid, "pc-0", agent_id="ag-aaaa2222")
    c = await new_agent(db, beta, "pc-3", agent_id="ag-bbbb3333")
    async with db.connect() as conn:
        got = await store.get_agent(conn, a)
        assert got.id == a
        assert got.customer_id == cid
        assert got.enrolled_at == NOW
        assert got.revoked_at is None
        assert got.connected is False
        assert (await store.get_agent(conn, "ag-aaaa2")).id == b
        assert (await store.get_agent(conn, "ag-b")).id == c
        assert (await store.get_agent(conn, "pc-3")).id == c
        with pytest.raises(Conflict, match="several agents"):
            await store.get_agent(conn, "ag-aaaa")
        with pytest.raises(Conflict):
            await store.get_agent(conn, "ag-")
        with pytest.raises(NotFound, match="no agent"):
            await store.get_agent(conn, "ag-zzzz")
        with pytest.raises(NotFound):
            await store.get_agent(conn, "pc")  # hostnames match exactly, not by prefix
        # LIKE wildcards in a prefix are literal characters.
        for wildcard in ("%", "_", "ag-%", "ag-b___3333", "ag-bb%"):
            with pytest.raises(NotFound):
                await store.get_agent(conn, wildcard)
        # Listing orders by customer, then hostname; filtering by customer works.
        assert [r.id for r in await store.list_agents(conn, cid)] == [b, a]
        assert [r.id for r in await store.list_agents(conn, beta)] == [c]
        assert [r.id for r in await store.list_agents(conn)] == [b, a, c]

    key = public_bytes(generate_key())
    await new_agent(db, cid, "pc-9", agent_id=agent_id_for(key))
    with pytest.raises(Conflict, match="already enrolled"):
        async with db.transaction() as conn:
            await store.add_agent(conn, agent_id=agent_id_for(key), customer_id=cid,
                                  public_key=key, hostname="pc", os="Linux", agent_version="1",
                                  now=NOW)


async def test_presence_and_revocation(db: Database) -> None:
    cid = await new_customer(db)
    aid = await new_agent(db, cid)
    t1 = NOW + dt.timedelta(seconds=10)
    async with db.transaction() as conn:
        await store.store_presence(conn, {aid: (True, t1, "2.0")})
    async with db.connect() as conn:
        row = await store.agent_by_id(conn, aid)
        assert await store.agent_by_id(conn, aid[:-1]) is None  # exact ids only
    assert row is not None
    assert (row.connected, row.last_seen, row.last_connected_at, row.agent_version) == (
        True, t1, t1, "2.0")
    async with db.transaction() as conn:
        await store.store_presence(conn, {aid: (False, t1 + dt.timedelta(seconds=5), "")})
    async with db.connect() as conn:
        row = await store.get_agent(conn, aid)
    assert row.connected is False
    assert row.last_seen == t1

    later = NOW + dt.timedelta(minutes=5)
    async with db.transaction() as conn:
        await store.revoke_agent(conn, aid, later)
    async with db.connect() as conn:
        row = await store.get_agent(conn, aid)
    assert row.revoked_at == later
    assert row.connected is False
    with pytest.raises(Conflict, match="already revoked"):
        async with db.transaction() as conn:
            await store.revoke_agent(conn, aid, later + dt.timedelta(minutes=1))
    async with db.connect() as conn:
        assert (await store.get_agent(conn, aid)).revoked_at == later  # first time kept


async def test_late_disconnect_of_an_older_connection_leaves_the_newer_one(db: Database) -> None:
    """Scale-out: the agent left process A for process B; A's "down" for the old
    connection arrives after B's "up" and must not mark the agent offline."""
    cid = await new_customer(db)
    aid = await new_agent(db, cid)
    t_a, t_b = NOW + dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=9, microseconds=1)
    async with db.transaction() as conn:
        await store.store_presence(conn, {aid: (True, t_a, "2.0")})  # A
    async with db.transaction() as conn:
        await store.store_presence(conn, {aid: (True, t_b, "2.0")})  # B
    async with db.transaction() as conn:
        await store.store_presence(conn, {aid: (False, t_a, "")})  # A, late
    async with db.connect() as conn:
        assert (await store.get_agent(conn, aid)).connected is True
    async with db.transaction() as conn:
        await store.store_presence(conn, {aid: (False, t_b, "")})  # B's own connection
    async with db.connect() as conn:
        assert (await store.get_agent(conn, aid)).connected is False


async def test_a_heartbeat_marks_its_agent_connected(db: Database) -> None:
    cid = await new_customer(db)
    aid = await new_agent(db, cid)
    async with db.transaction() as conn:
        await store.store_presence(conn, {aid: (False, NOW, "")})
        await store.store_heartbeats(conn, [(aid, NOW, {"cpu_percent": 1.0})])
    async with db.connect() as conn:
        row = await store.get_agent(conn, aid)
    assert (row.connected, row.last_seen) == (True, NOW)


async def test_store_heartbeats_updates_a_batch(db: Database) -> None:
    cid = await new_customer(db)
    a = await new_agent(db, cid, "pc-a")
    b = await new_agent(db, cid, "pc-b")
    c = await new_agent(db, cid, "pc-c")
    ta, tb = NOW + dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=2, microseconds=7)
    health_a = {"cpu_percent": 12.5, "disks": [{"mount": "/", "percent": 90.0}]}
    health_b = {"cpu_percent": 1.0, "problems": []}
    async with db.transaction() as conn:
        await store.store_heartbeats(conn, [(a, ta, health_a), (b, tb, health_b)])
        await store.store_heartbeats(conn, [])  # an empty batch is a no-op
        # Unknown agents in a batch are skipped (the agent may have been deleted).
        await store.store_heartbeats(conn, [("ag-gone", ta, {})])
    async with db.connect() as conn:
        rows = {r.id: r for r in await store.list_agents(conn)}
    assert (rows[a].last_seen, rows[a].health) == (ta, health_a)
    assert (rows[b].last_seen, rows[b].health) == (tb, health_b)
    assert (rows[c].last_seen, rows[c].health) == (None, None)
    # A later batch replaces the earlier values.
    async with db.transaction() as conn:
        await store.store_heartbeats(conn, (x for x in [(a, tb, {"cpu_percent": 99.0})]))
    async with db.connect() as conn:
        row = await store.get_agent(conn, a)
    assert (row.last_seen, row.health) == (tb, {"cpu_percent": 99.0})


# ----------------------------------------------------------------------------- events
async def test_store_event_dedupes_by_agent_and_seq(db: Database) -> None:
    cid = await new_customer(db)
    a = await new_agent(db, cid, "pc-a")
    b = await new_agent(db, cid, "pc-b")
    at = NOW - dt.timedelta(minutes=1)

    async def put(agent: str, seq: int, kind: str = "boot") -> bool:
        async with db.transaction() as conn:
            stored = await store.store_events(conn, [(agent, seq, kind, at, {"seq": seq})], NOW)
            return stored == {(agent, seq)}

    assert await put(a, 1) is True
    assert await put(a, 1, kind="resent") is False
    assert await put(a, 2) is True
    assert await put(b, 1) is True  # the same seq from another agent is another event
    assert await put(a, 2**40) is True  # seqs are 64-bit
    async with db.connect() as conn:
        rows = await store.list_events(conn, a)
        count = (await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar_one()
        assert [r["seq"] for r in await store.list_events(conn, a, limit=2)] == [2**40, 2]
        assert await store.list_events(conn, "ag-other") == []
    assert count == 4
    assert [r["seq"] for r in rows] == [2**40, 2, 1]  # newest first
    first = rows[-1]
    assert (first["kind"], first["at"], first["received_at"], first["data"]) == (
        "boot", at, NOW, {"seq": 1})

    # Re-sends racing each other are still stored once.
    results = await asyncio.gather(*(put(b, 5) for _ in range(8)))
    assert results.count(True) == 1
    async with db.connect() as conn:
        assert [r["seq"] for r in await store.list_events(conn, b)] == [5, 1]


# ----------------------------------------------------------------------------- technicians, audit
async def test_technicians_and_audit(db: Database) -> None:
    async with db.transaction() as conn:
        tech = await store.add_technician(conn, "lan", "admin", token_hash("clt_x"), NOW)
        await store.record_audit(conn, actor="lan", action="customer.add", target="customer:1",
                                 detail={"name": "Acme"}, now=NOW)
    async with db.connect() as conn:
        found = await store.technician_by_token_hash(conn, token_hash("clt_x"))
        assert found is not None
        assert found.id == tech.id
        assert found.revoked_at is None
        assert await store.technician_by_token_hash(conn, token_hash("clt_y")) is None
        assert all(not hasattr(t, "token_hash") for t in await store.list_technicians(conn))
        (entry,) = await store.list_audit(conn)
        assert (entry["actor"], entry["detail"], entry["at"]) == ("lan", {"name": "Acme"}, NOW)
    async with db.transaction() as conn:
        await store.revoke_technician(conn, "lan", NOW)
    with pytest.raises(NotFound):
        async with db.transaction() as conn:
            await store.revoke_technician(conn, "lan", NOW)
    with pytest.raises(Conflict):
        async with db.transaction() as conn:
            await store.add_technician(conn, "lan", "viewer", token_hash("clt_z"), NOW)


# ----------------------------------------------------------------------------- UTCDateTime
ROUND_TRIP_TIMES = [
    NOW,
    dt.datetime(2025, 3, 1, 15, 30, 15, 123456, tzinfo=HCM),
    dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-11))),
    dt.datetime(2038, 1, 19, 3, 14, 8, tzinfo=dt.UTC),
]


async def test_utc_datetime_round_trips_aware_values_as_utc(db: Database) -> None:
    async with db.transaction() as conn:
        ids = [(await store.add_customer(conn, f"c{i}", "UTC", when)).id
               for i, when in enumerate(ROUND_TRIP_TIMES)]
    async with db.connect() as conn:
        back = [(await store.get_customer(conn, cid)).created_at for cid in ids]
    for when, got in zip(ROUND_TRIP_TIMES, back, strict=True):
        assert got == when  # same instant
        assert got.utcoffset() == dt.timedelta(0)
        assert got.tzinfo is dt.UTC
        assert got.replace(tzinfo=None) == when.astimezone(dt.UTC).replace(tzinfo=None)
    # 10:00 in Hanoi is earlier than 04:00 UTC: ordering must follow the instant.
    async with db.transaction() as conn:
        await store.add_customer(conn, "late", "UTC", dt.datetime(2025, 1, 1, 4, 0, tzinfo=dt.UTC))
        await store.add_customer(conn, "early", "UTC", dt.datetime(2025, 1, 1, 10, 0, tzinfo=HCM))
    async with db.connect() as conn:
        names = (await conn.execute(
            sa.select(customers.c.name).where(customers.c.name.in_(["late", "early"]))
            .order_by(customers.c.created_at))).scalars().all()
    assert names == ["early", "late"]
    # Naive datetimes are refused before they reach the database.
    with pytest.raises((ValueError, sa.exc.StatementError), match="naive datetime"):
        async with db.transaction() as conn:
            await store.add_customer(conn, "Naive", "UTC", dt.datetime(2025, 1, 1))
    async with db.connect() as conn:
        assert "Naive" not in [c.name for c in await store.list_customers(conn)]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "pg"])
def test_utc_datetime_bind_and_result(dialect: sa.Dialect) -> None:
    column = UTCDateTime()
    aware = dt.datetime(2025, 1, 1, 7, 0, tzinfo=HCM)
    bound = column.process_bind_param(aware, dialect)
    assert bound is not None
    assert bound == dt.datetime(2025, 1, 1, 0, 0, tzinfo=dt.UTC).replace(
        tzinfo=None if dialect.name == "sqlite" else dt.UTC)
    assert column.process_bind_param(None, dialect) is None
    with pytest.raises(ValueError, match="naive"):
        column.process_bind_param(dt.datetime(2025, 1, 1), dialect)
    assert column.process_result_value(None, dialect) is None
    back = column.process_result_value(bound, dialect)
    assert back == aware
    assert back is not None
    assert back.tzinfo is dt.UTC


def test_schema_columns_that_hold_times_are_utc() -> None:
    for table in (customers, agents, enrollment_tokens, events):
        for col in table.columns:
            if isinstance(col.type, sa.DateTime | UTCDateTime):
                assert isinstance(col.type, UTCDateTime), f"{table.name}.{col.name}"


async def test_store_events_stores_a_batch_once(db: Database) -> None:
    cid = await new_customer(db)
    aid = await new_agent(db, cid)
    other = await new_agent(db, cid, hostname="pc-2")
    batch = [(aid, seq, "update_step", NOW, {"n": seq}) for seq in (1, 2, 3)]
    async with db.transaction() as conn:  # two agents' events in one statement
        assert await store.store_events(conn, [*batch, (other, 1, "update_step", NOW, {})],
                                        NOW) == {(aid, 1), (aid, 2), (aid, 3), (other, 1)}
        assert await store.store_events(conn, [], NOW) == set()
    async with db.transaction() as conn:  # a re-send with one new event stores only that
        again = [*batch[1:], (aid, 4, "update_step", NOW, {"n": 4})]
        assert await store.store_events(conn, again, NOW) == {(aid, 4)}
    async with db.connect() as conn:
        stored = await store.list_events(conn, aid, limit=10)
    assert sorted(e["seq"] for e in stored) == [1, 2, 3, 4]
