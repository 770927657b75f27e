"""The contracts-expiring report (issue 15's console page, the sales desk's call list), on
SQLite and PostgreSQL: one row per customer and coverage end, with how many machines it
covers and the customer's contacts, agreeing machine for machine with the per-machine report
the CLI and the weekly notifications use."""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.policy.config import load_policy_data
from careline.coordinator.policy.overrides import PolicyLayers
from careline.coordinator.storage import fleet, service
from careline.coordinator.storage import notify as nstore
from careline.coordinator.storage.db import Database

NOW = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)  # 10:00 in Ho Chi Minh City
DAY = dt.timedelta(days=1)


@pytest.fixture
async def desk(database: str) -> AsyncIterator[tuple[Database, IncidentDesk]]:
    db = Database(database)
    await db.migrate()
    async with db.transaction() as conn:
        channel = await nstore.add_channel(conn, {
            "name": "mail", "kind": "email", "config": {}, "rate_per_minute": 0,
            "created_by": "lan", "created_at": NOW})
        # (customer, warranty signed, maintenance booked after it, machines by join day,
        #  contacts)
        for name, signed, booked, joined, contacts in (
            ("Minh Anh", dt.date(2025, 12, 20), False, {NOW - 40 * DAY: 7, NOW - 2 * DAY: 5},
             ["giamdoc", "ketoan"]),
            ("Hoa Binh", dt.date(2026, 10, 1), False, {NOW - 10 * DAY: 4}, ["hb"]),
            ("Sao Mai", dt.date(2025, 12, 20), True, {NOW - 30 * DAY: 3}, []),
            ("Dong A", dt.date(2025, 12, 25), False, {NOW - 5 * DAY: 1}, []),
        ):
            customer = await fleet.add_customer(conn, name, "Asia/Ho_Chi_Minh", NOW)
            contract = await service.add_contract(conn, customer_id=customer.id,
                                                  signed_on=signed, warranty_months=12,
                                                  machines=None, now=NOW)
            if booked:  # a renewal booked back to back: nothing to sell
                await service.add_maintenance(conn, contract_id=contract,
                                              start=dt.date(2026, 12, 20),
                                              end=dt.date(2027, 12, 19), tier="standard", now=NOW)
            for when, count in joined.items():
                for i in range(count):
                    await fleet.add_agent(conn, agent_id=os.urandom(20).hex(),
                                          customer_id=customer.id, public_key=os.urandom(32),
                                          hostname=f"{name[:2]}-{when.day}-{i}", os="Windows 11",
                                          agent_version="1.0", now=when, contract_id=contract)
            for contact in contacts:
                await nstore.add_recipient(conn, {
                    "name": contact, "channel_id": channel, "address": f"{contact}@{name[:2]}.vn",
                    "language": "vi", "timezone": "Asia/Ho_Chi_Minh", "workdays": "mon,tue",
                    "opens": "08:00", "closes": "17:00", "customer_id": customer.id,
                    "created_at": NOW})
    yield db, IncidentDesk(db, PolicyLayers(*load_policy_data(None)), dt.timedelta(seconds=90))
    await db.close()


async def test_one_row_per_customer_and_coverage_end_with_its_contacts(
        desk: tuple[Database, IncidentDesk]) -> None:
    db, incidents = desk
    async with db.connect() as conn:
        rows = await incidents.expiring_contracts(conn, 60, NOW)
        machines = await incidents.expiring_machines(conn, 60, NOW)

    assert [(r["customer"], r["machines"]) for r in rows] == [("Minh Anh", 12), ("Dong A", 1)]
    minh_anh, dong_a = rows
    assert minh_anh["ends_on"] == dt.date(2026, 12, 19)
    assert minh_anh["days_left"] == 19
    assert minh_anh["contacts"] == ["giamdoc <giamdoc@Mi.vn>", "ketoan <ketoan@Mi.vn>"]
    assert dong_a["contacts"] == []
    assert dong_a["a_machine"] in {m["machine"] for m in machines}
    # The same machines as the per-machine report, customer for customer and day for day.
    assert Counter((m["customer"], m["ends_on"]) for m in machines) == Counter(
        {(r["customer"], r["ends_on"]): r["machines"] for r in rows})


async def test_a_revoked_machine_is_not_counted_and_a_short_window_finds_less(
        desk: tuple[Database, IncidentDesk]) -> None:
    db, incidents = desk
    async with db.transaction() as conn:
        some = next(a for a in await fleet.list_agents(conn) if a.hostname.startswith("Do"))
        await fleet.revoke_agent(conn, some.id, NOW)
    async with db.connect() as conn:
        assert [r["customer"] for r in await incidents.expiring_contracts(conn, 60, NOW)] == [
            "Minh Anh"]
        assert await incidents.expiring_contracts(conn, 10, NOW) == []
