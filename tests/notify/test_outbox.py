"""The outbox on SQLite and PostgreSQL: stored with the event's transaction, one message per
incident, retries with backoff, unhealthy channels audited, leases taken over after a crash,
SKIP LOCKED between processes, and the daily digest. Deliveries go to a real webhook server."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.notify import policy
from careline.coordinator.notify.events import notify
from careline.coordinator.notify.sender import Notifier
from careline.coordinator.policy.config import load_policy
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
    desk = IncidentDesk(db, load_policy(None), dt.timedelta(seconds=90))
    coordinator = types.SimpleNamespace(db=db, datadir=types.SimpleNamespace(path=tmp_path), desk=desk)
    notifier = Notifier(coordinator)  # type: ignore[arg-type]
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
    with pytest.raises(RuntimeError):
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
    assert row["status"] == "pending" and row["attempts"] == 1 and "HTTP 500" in row["last_error"]
    assert row["next_attempt_at"] >= start + dt.timedelta(seconds=9)
    assert await setup.notifier.deliver_due(start + dt.timedelta(seconds=1)) == 0  # backing off
    assert await setup.notifier.deliver_due(start + dt.timedelta(seconds=11)) == 1
    row = (await setup.rows())[0]
    assert row["attempts"] == 2 and row["next_attempt_at"] >= start + dt.timedelta(seconds=19)
    async with setup.db.connect() as conn:
        channel = (await store.list_channels(conn))[0]
        actions = [a["action"] for a in fleet.rows_of(await conn.execute(sa.select(audit)))]
    assert channel["healthy"] is False and channel["failures"] == 2
    assert actions == ["notify.channel.unhealthy"]

    setup.hook.status = 200
    assert await setup.notifier.deliver_due(start + dt.timedelta(minutes=5)) == 1
    assert [r["status"] for r in await setup.rows()] == ["sent"]
    async with setup.db.connect() as conn:
        channel = (await store.list_channels(conn))[0]
        actions = [a["action"] for a in fleet.rows_of(await conn.execute(sa.select(audit)))]
    assert channel["healthy"] is True and actions[-1] == "notify.channel.recovered"
    assert len(setup.hook.received) == 1 and setup.hook.received[0]["delivery"] == row["delivery"]


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
