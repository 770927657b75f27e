"""The outbox on SQLite and PostgreSQL: stored with the event's transaction, one message per
incident, retries with backoff, unhealthy channels audited, leases taken over after a crash,
SKIP LOCKED between processes, and the daily digest. Deliveries go to a real webhook server."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from careline.coordinator.datadir import Settings
from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.notify import policy
from careline.coordinator.notify.events import notify
from careline.coordinator.notify.sender import Notifier
from careline.coordinator.policy.config import load_policy_data
from careline.coordinator.policy.overrides import PolicyLayers
from careline.coordinator.storage import fleet
from careline.coordinator.storage import notify as store
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.schema import audit, notifications
from tests.notify.receivers import WebhookReceiver

SECRET = secrets.token_urlsafe(16)
FACTS = {"incident": 1, "kind": "disk_failing", "severity": "high", "detail": "", "machine": "ab" * 20,
         "hostname": "KT-01", "customer": "Minh Anh", "action": "onsite_reinstall",
         "covered": True, "fee_vnd": 500_000, "due_at": "2026-12-01T10:30:00+00:00",
         "product": "KeToan", "version": "2026.2", "outcome": "failed", "reason": "check failed"}


class Setup:
    def __init__(self, db: Database, notifier: Notifier, hook: WebhookReceiver) -> None:
        self.db, self.notifier, self.hook = db, notifier, hook

    async def rows(self) -> list[dict[str, Any]]:
        async with self.db.connect() as conn:
            return fleet.rows_of(await conn.execute(sa.select(notifications).order_by(notifications.c.id)))

    async def emit(self, kind: str = "incident.opened", key: str = "e1", thread: str = "",
                   severity: str = "high") -> None:
        async with self.db.transaction() as conn:
            await notify(conn, policy.Event(kind, key, severity, FACTS, customer_id=1,
                                            thread=thread), now())


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
async def setup(database: str, tmp_path: Path) -> AsyncIterator[Setup]:
    (tmp_path / "notify.toml").write_text("lease_seconds = 30\nbackoff_seconds = 10\nunhealthy_after = 2\n")
    db = Database(database)
    await db.migrate()
    desk = IncidentDesk(db, PolicyLayers(*load_policy_data(None)), dt.timedelta(seconds=90))
    notifier = Notifier(db, tmp_path, desk, Settings())
    with WebhookReceiver(SECRET) as hook:
        async with db.transaction() as conn:
            await fleet.add_customer(conn, "Minh Anh", "Asia/Ho_Chi_Minh", now())
            channel = await store.add_channel(conn, {
                "name": "hook", "kind": "webhook", "config": {"url": hook.url, "timeout": 5.0},
                "secret": notifier.secrets.encrypt(SECRET), "rate_per_minute": 0,
                "created_by": "test", "created_at": now()})
            recipient = await store.add_recipient(conn, {
                "name": "ops", "channel_id": channel, "address": "", "language": "en",
                "timezone": "UTC", "workdays": "mon,tue,wed,thu,fri,sat,sun", "opens": "00:00",
                "closes": "23:59", "technician": "lan", "created_at": now()})
            await store.add_route(conn, {"recipient_id": recipient, "events": "*",
                                         "customer_id": None, "min_severity": "low", "kinds": "",
                                         "created_at": now()})
        yield Setup(db, notifier, hook)
    await db.close()


async def test_stored_with_the_event_transaction_or_not_at_all(setup: Setup) -> None:
    with pytest.raises(RuntimeError):  # noqa: PT012 - the transaction's whole scope is what fails
        async with setup.db.transaction() as conn:
            await notify(conn, policy.Event("incident.opened", "lost", "high", {}), now())
            raise RuntimeError("the event's own write failed")
    assert await setup.rows() == []
    await setup.emit(key="e1")
    await setup.emit(key="e1")  # the same event again (a re-sent agent event): one row
    rows = await setup.rows()
    assert [(r["key"], r["status"]) for r in rows] == [("e1:r1", "pending")]
    assert setup.notifier.secrets.key_file.stat().st_mode & 0o077 == 0


async def test_one_message_per_incident_updates_go_to_the_digest(setup: Setup) -> None:
    await setup.emit("incident.opened", "incident:1:opened", thread="incident:1")
    await setup.emit("incident.updated", "incident:1:updated:1", thread="incident:1")
    await setup.emit("incident.overdue", "incident:1:overdue", thread="incident:1")
    assert [r["status"] for r in await setup.rows()] == ["pending", "digest", "pending"]
    assert await setup.notifier.deliver_due(now()) == 2
    assert sorted(m["event"] for m in setup.hook.received) == ["incident.opened", "incident.overdue"]

    # The daily digest gathers what was folded, once per day.
    async with setup.db.connect() as conn:
        ops = (await store.list_recipients(conn))[0]
    await setup.notifier._digest(ops, now())
    await setup.notifier._digest(ops, now())
    assert await setup.notifier.deliver_due(now()) == 1
    digest = setup.hook.received[-1]
    assert digest["event"] == "digest.daily"
    assert digest["items"][0]["updates"][0]["event"] == "incident.updated"
    assert [r["status"] for r in await setup.rows()] == ["sent", "digested", "sent", "sent"]


async def test_failures_back_off_mark_channel_unhealthy_then_recover(setup: Setup) -> None:
    setup.hook.status = 500
    await setup.emit()
    start = now()
    assert await setup.notifier.deliver_due(start) == 1
    row = (await setup.rows())[0]
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    assert "HTTP 500" in row["last_error"]
    assert row["next_attempt_at"] >= start + dt.timedelta(seconds=9)
    assert await setup.notifier.deliver_due(start + dt.timedelta(seconds=1)) == 0  # backing off
    assert await setup.notifier.deliver_due(start + dt.timedelta(seconds=11)) == 1
    row = (await setup.rows())[0]
    assert row["attempts"] == 2
    assert row["next_attempt_at"] >= start + dt.timedelta(seconds=19)
    async with setup.db.connect() as conn:
        channel = (await store.list_channels(conn))[0]
        actions = [a["action"] for a in fleet.rows_of(await conn.execute(sa.select(audit)))]
    assert channel.healthy is False
    assert channel.failures == 2
    assert actions == ["notify.channel.unhealthy"]

    setup.hook.status = 200
    assert await setup.notifier.deliver_due(start + dt.timedelta(minutes=5)) == 1
    assert [r["status"] for r in await setup.rows()] == ["sent"]
    async with setup.db.connect() as conn:
        channel = (await store.list_channels(conn))[0]
        actions = [a["action"] for a in fleet.rows_of(await conn.execute(sa.select(audit)))]
    assert channel.healthy is True
    assert actions[-1] == "notify.channel.recovered"
    assert len(setup.hook.received) == 1
    assert setup.hook.received[0]["delivery"] == row["delivery"]


async def test_an_abandoned_claim_is_taken_over_with_the_same_delivery_id(setup: Setup) -> None:
    await setup.emit(key="a")
    await setup.emit(key="b")
    first = await setup.notifier.claim(now())  # ... and the process dies here
    assert [[r["id"] for r in g] for g in first] == [[1], [2]]
    assert await setup.notifier.claim(now()) == []  # leased: nobody else sends them
    later = now() + dt.timedelta(seconds=31)
    again = await setup.notifier.claim(later)
    assert [policy.delivery_id(g) for g in again] == [policy.delivery_id(g) for g in first]


async def test_mass_event_waits_for_its_fold_window_and_goes_as_one(setup: Setup) -> None:
    for n in range(5):
        await setup.emit("job.failed", f"job:{n}")
    assert all(r["fold_key"] == "job.failed::1" for r in await setup.rows())
    assert await setup.notifier.deliver_due(now()) == 0  # held for the fold window
    assert await setup.notifier.deliver_due(now() + dt.timedelta(seconds=31)) == 5
    assert [m["count"] for m in setup.hook.received] == [5]
    assert setup.hook.received[0]["subject"] == "Update failed on 5 machines of Minh Anh"


async def test_processes_claim_disjoint_rows(setup: Setup, database: str) -> None:
    if setup.db.is_sqlite:
        pytest.skip("SQLite has one writer: there is no concurrent claim to keep apart")
    for n in range(4):
        await setup.emit("incident.opened", f"i{n}")
    other = Database(database)
    try:
        async with setup.db.transaction() as mine:
            held = await store.claimable(mine, now(), now(), limit=2)
            async with other.transaction() as theirs:
                rest = await asyncio.wait_for(store.claimable(theirs, now(), now(), limit=10), 5)
        assert {r["id"] for r in held}.isdisjoint(r["id"] for r in rest)
        assert len(held) + len(rest) == 4
    finally:
        await other.close()


async def _machine(setup: Setup, signed_on: dt.date, at: dt.datetime) -> fleet.Agent:
    """A machine of customer 1 on a contract signed `signed_on` (12 months of warranty)."""
    from careline.coordinator.storage import service

    async with setup.db.transaction() as conn:
        contract = await service.add_contract(conn, customer_id=1, signed_on=signed_on,
                                              warranty_months=12, machines=None, now=at)
        key = secrets.token_bytes(32)
        await fleet.add_agent(conn, agent_id="pc" + key.hex()[:30], customer_id=1, public_key=key,
                              hostname="KT-01", os="Windows 11", agent_version="0.1.0", now=at,
                              contract_id=contract)
        return await fleet.get_agent(conn, "KT-01")


# Monday 2026-11-30, 09:00 in Ho Chi Minh City (the ops recipient is on UTC: 02:00, open all day).
MONDAY = dt.datetime(2026, 11, 30, 2, 0, tzinfo=dt.UTC)


async def test_weekly_coverage_list_to_sales_and_the_offer_to_the_customer(setup: Setup) -> None:
    await _machine(setup, MONDAY.date() - dt.timedelta(days=350), MONDAY)  # warranty ends in ~2 weeks
    async with setup.db.transaction() as conn:
        await store.add_route(conn, {"recipient_id": 1, "events": "coverage.expiring",
                                     "customer_id": None, "min_severity": "low", "kinds": "",
                                     "created_at": MONDAY})
        contact = await store.add_recipient(conn, {
            "name": "Minh Anh <ketoan@minhanh.vn>", "channel_id": 1, "address": "",
            "language": "vi", "timezone": "Asia/Ho_Chi_Minh", "workdays": "mon,tue,wed,thu,fri",
            "opens": "08:00", "closes": "17:30", "customer_id": 1, "created_at": MONDAY})
        await store.add_route(conn, {"recipient_id": contact, "events": "coverage.ending,incident.opened",
                                     "customer_id": 1, "min_severity": "low", "kinds": "",
                                     "created_at": MONDAY})
    await setup.notifier.periodic(MONDAY)
    await setup.notifier.periodic(MONDAY + dt.timedelta(hours=1))  # once a week, not per round
    await setup.notifier.periodic(MONDAY + dt.timedelta(days=1))  # Tuesday: not the day
    rows = [r for r in await setup.rows() if r["event"].startswith("coverage")]
    assert sorted((r["event"], r["recipient_id"]) for r in rows) == [
        ("coverage.ending", contact), ("coverage.expiring", 1)]
    machines = rows[0]["facts"]["machines"]
    assert [m["hostname"] for m in machines] == ["KT-01"]
    assert machines[0]["coverage"] == "warranty"
    # The customer's contact never hears of incidents, even with a route naming them.
    await setup.emit("incident.opened", "incident:9:opened", thread="incident:9")
    assert [r["recipient_id"] for r in await setup.rows() if r["event"] == "incident.opened"] == [1]


async def test_open_incident_past_its_due_time_is_notified_overdue_once(setup: Setup) -> None:
    reported = MONDAY - dt.timedelta(days=7)
    agent = await _machine(setup, reported.date(), reported)
    async with setup.db.transaction() as conn:
        incident = await setup.notifier.desk.open_incident(
            conn, agent, kind="disk_failing", subject="sda", category="disk", severity="high",
            opened_by="agent", detail="SMART", now=reported)
    await setup.notifier.periodic(MONDAY)
    await setup.notifier.periodic(MONDAY)
    events = [(r["event"], r["status"]) for r in await setup.rows()]
    # The visit was folded into the day's digest (the route is "*"); being late breaks through.
    assert events == [("incident.opened", "pending"), ("visit.created", "digested"),
                      ("incident.overdue", "pending"), ("visit.overdue", "pending"),
                      ("digest.daily", "pending")]
    assert await setup.notifier.deliver_due(MONDAY + dt.timedelta(days=1)) == 4
    overdue = next(m for m in setup.hook.received if m["event"] == "incident.overdue")
    assert overdue["subject"].startswith(f"OVERDUE: Incident #{incident}: failing disk")


async def test_channel_throttle_holds_the_rest_without_counting_an_attempt(setup: Setup) -> None:
    async with setup.db.transaction() as conn:
        await store.update_channel(conn, 1, rate_per_minute=2)
    for n in range(3):
        await setup.emit(key=f"t{n}", thread=f"incident:{n}")
    assert await setup.notifier.deliver_due(now()) == 3
    rows = await setup.rows()
    assert sorted(r["status"] for r in rows) == ["pending", "sent", "sent"]
    held = next(r for r in rows if r["status"] == "pending")
    assert held["attempts"] == 0
    assert held["next_attempt_at"] > now() + dt.timedelta(seconds=50)
    assert len(setup.hook.received) == 2


async def test_rollout_pause_and_job_results_name_their_machines(setup: Setup) -> None:
    from careline.coordinator.notify.events import notify_job_result, notify_rollout
    from careline.coordinator.storage import fleet as fstore
    from careline.coordinator.storage.rollouts import Rollout, RolloutMachine
    from careline.coordinator.storage.updates import JobPart

    agent = await _machine(setup, now().date(), now())
    rollout = Rollout(id=4, release_id=1, product="KeToan", version="2026.2", kind="regulation",
                      effective=dt.date(2027, 1, 1), customer_id=None, percents="5,25,100",
                      status="paused", sent_waves=2, reason="", started_by="admin",
                      started_at=now(), updated_at=now(), last_targeting_at=None)
    part = JobPart(id=1, job_id=9, agent_id=agent.id, ref="job-9-1", product="KeToan",
                   version="2026.2", status="downloading", outcome=None, detail=None,
                   created_at=now(), updated_at=now(), finished_at=None, kind="update",
                   delivery="network", stop_product=False)
    async with setup.db.transaction() as conn:
        (presence,) = await fstore.list_presence(conn, agent.customer_id)
        failed = RolloutMachine(
            id=1, rollout_id=4, agent_id=agent.id, customer_id=agent.customer_id, wave=1,
            state="failed", job_id=9, sent_at=now(), finished_at=now(), detail="check failed",
            deadline_incident=False, from_version="2026.1", customer=agent.customer,
            job_status="rolled_back", presence=presence)
        await notify_rollout(conn, "rollout.paused", rollout,
                             [failed] * 40, "wave 2: 40 of 200 failed", now())
        await notify_rollout(conn, "rollout.deadline_at_risk", rollout, [], "", now())  # none late
        await notify_job_result(conn, part, "rolled_back", "check failed", now())
        await notify_job_result(conn, part, "downloading", None, now())  # not a result
    assert await setup.notifier.deliver_due(now() + dt.timedelta(minutes=1)) == 2
    by_event = {m["event"]: m for m in setup.hook.received}
    assert by_event["rollout.paused"]["subject"] == "Rollout 4 of KeToan 2026.2 paused"
    assert "Machines affected: 40" in by_event["rollout.paused"]["text"]
    assert "- KT-01" in by_event["rollout.paused"]["text"]
    assert by_event["job.failed"]["subject"] == "Update failed on KT-01 (Minh Anh)"
    assert "Result: rolled back" in by_event["job.failed"]["text"]


async def test_critical_goes_first_through_a_backlog(setup: Setup) -> None:
    for n in range(6):
        await setup.emit(key=f"b{n}", thread=f"incident:{n}", severity="high")
    await setup.emit(key="fire", thread="incident:99", severity="critical")
    async with setup.db.transaction() as conn:
        first = await store.claimable(conn, now(), now(), limit=2)
    assert [r["severity"] for r in first] == ["critical", "high"]


async def test_a_customer_override_makes_high_incidents_ignore_quiet_hours(setup: Setup) -> None:
    """`notify.urgent_from` per customer (issue 16 part 3): the same high incident at night
    waits for the opening by the vendor's policy, goes at once by the hospital's."""
    from careline.coordinator.storage import service
    from careline.coordinator.storage.schema import notify_recipients

    night = MONDAY + dt.timedelta(hours=14)  # 16:00 UTC, the recipient opens 08:00 UTC
    agent = await _machine(setup, night.date(), night)
    desk = setup.notifier.desk
    async with setup.db.transaction() as conn:
        await conn.execute(notify_recipients.update().values(opens="08:00", closes="12:00"))
        await desk.open_incident(conn, agent, kind="disk_failing", subject="sda",
                                 category="disk", severity="high", opened_by="agent",
                                 detail="SMART", now=night)
        await service.set_override(conn, target="customer:1", key="notify.urgent_from",
                                   value="high", by="admin", now=night)
        await desk.open_incident(conn, agent, kind="product_crash_loop", subject="KeToan",
                                 category="bug", severity="high", opened_by="agent",
                                 detail="3 crashes", now=night)
    opened = [r for r in await setup.rows() if r["event"] == "incident.opened"]
    assert [r["next_attempt_at"] for r in opened] == [
        MONDAY.replace(hour=8) + dt.timedelta(days=1), night]
