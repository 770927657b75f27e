"""IncidentDesk.sweep_offline on SQLite and PostgreSQL: silence counted in the customer's
business time with their closures from storage, clean stops are "off", and per-machine
policy overrides (thresholds, counting) apply."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import pytest

from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.policy.config import load_policy_data
from careline.coordinator.policy.overrides import PolicyLayers, target
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import service
from careline.coordinator.storage.db import Database
from careline.shared.keys import agent_id_for, generate_key, public_bytes

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def vn(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=HCM).astimezone(dt.UTC)


@pytest.fixture
async def db(database: str) -> AsyncIterator[Database]:
    handle = Database(database)
    await handle.migrate()
    yield handle
    await handle.close()


async def machine(db: Database, customer_id: int, heard: dt.datetime, *, off: bool = False) -> str:
    key = public_bytes(generate_key())
    agent_id = agent_id_for(key)
    async with db.transaction() as conn:
        await store.add_agent(conn, agent_id=agent_id, customer_id=customer_id, public_key=key,
                              hostname=agent_id, os="Windows", agent_version="1", now=heard)
        await store.store_presence(conn, {agent_id: (True, heard, "1")})
        await store.store_presence(conn, {agent_id: (False, heard, "")})
        if off:
            await store.store_clean_stops(conn, {agent_id: heard})
    return agent_id


async def sweep(db: Database, desk: IncidentDesk, start: dt.datetime, end: dt.datetime,
                minutes: int = 20) -> None:
    now = start
    while now <= end:
        await desk.sweep_offline(now)
        now += dt.timedelta(minutes=minutes)


async def open_kinds(db: Database, agent_id: str) -> list[str]:
    async with db.connect() as conn:
        return [i.kind for i in await service.list_incidents(conn, open_only=True,
                                                                 agent_id=agent_id)]


async def test_business_time_closures_clean_stops_and_overrides(db: Database) -> None:
    desk = IncidentDesk(db, PolicyLayers(*load_policy_data()), dt.timedelta(seconds=90))
    async with db.transaction() as conn:
        open_co = await store.add_customer(conn, "Minh Anh", "Asia/Ho_Chi_Minh", vn(2026, 3, 1))
        closed_co = await store.add_customer(conn, "Hoa Mai", "Asia/Ho_Chi_Minh", vn(2026, 3, 1))
        await service.add_closure(conn, customer_id=closed_co.id, first_day=dt.date(2026, 3, 3),
                                  last_day=dt.date(2026, 3, 4), note="moving office",
                                  created_by="lan", now=vn(2026, 3, 1))
    tuesday_nine = vn(2026, 3, 3, 9, 0)
    crashed = await machine(db, open_co.id, tuesday_nine)
    shut_down = await machine(db, open_co.id, tuesday_nine, off=True)
    closed = await machine(db, closed_co.id, tuesday_nine)
    impatient = await machine(db, open_co.id, tuesday_nine)
    async with db.transaction() as conn:  # this machine: offline after 1 business hour
        await service.set_override(conn, target=target("machine", impatient),
                                   key="machine.offline_incident_after_minutes", value=60,
                                   by="lan", now=tuesday_nine)
        await service.set_override(conn, target=target("machine", impatient),
                                   key="alerts.agent_offline.open_after", value=1, by="lan",
                                   now=tuesday_nine)

    await sweep(db, desk, vn(2026, 3, 3, 9, 20), vn(2026, 3, 3, 10, 20))
    assert await open_kinds(db, impatient) == ["agent_offline"]  # 1 h 20 > 1 h, one check
    assert await open_kinds(db, crashed) == []
    await sweep(db, desk, vn(2026, 3, 3, 10, 40), vn(2026, 3, 3, 17, 20))
    assert await open_kinds(db, crashed) == ["agent_offline"]  # over 4 business hours
    assert await open_kinds(db, shut_down) == []  # off, not offline
    assert await open_kinds(db, closed) == []  # the customer is closed Tuesday and Wednesday
    await sweep(db, desk, vn(2026, 3, 4, 8, 0), vn(2026, 3, 5, 8, 0), minutes=240)
    await sweep(db, desk, vn(2026, 3, 5, 8, 20), vn(2026, 3, 5, 11, 0))
    assert await open_kinds(db, closed) == []
    await sweep(db, desk, vn(2026, 3, 5, 11, 20), vn(2026, 3, 5, 13, 20))
    assert await open_kinds(db, closed) == ["agent_offline"]  # Thursday: open again
    assert await open_kinds(db, shut_down) == []


async def test_overrides_the_policy_file_no_longer_accepts_are_ignored(db: Database) -> None:
    """The vendor's file changed under a stored override (a rule gone): that machine runs on
    the vendor's policy, and sweeps and decisions carry on for everyone."""
    desk = IncidentDesk(db, PolicyLayers(*load_policy_data()), dt.timedelta(seconds=90))
    async with db.transaction() as conn:
        customer = await store.add_customer(conn, "Minh Anh", "Asia/Ho_Chi_Minh", vn(2026, 3, 1))
        await service.set_override(conn, target=target("customer", customer.id),
                                   key="rules[40].due", value="same_day", by="lan",
                                   now=vn(2026, 3, 1))
    gone = await machine(db, customer.id, vn(2026, 3, 3, 9, 0))
    await sweep(db, desk, vn(2026, 3, 3, 14, 0), vn(2026, 3, 3, 15, 0))
    assert await open_kinds(db, gone) == ["agent_offline"]
    async with db.connect() as conn:
        agent = await store.get_agent(conn, gone)
        assert await desk.policy_for(conn, agent) is desk.policy
