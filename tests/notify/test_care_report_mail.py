"""The monthly care report through the outbox (issue 15), on SQLite and PostgreSQL: on the
customer's local 1st, a contact who opted in gets one e-mail with last month's report as a PDF
(printed when sent) naming their machines; a webhook routed the event gets a summary; a second
tick, a restarted notifier and a later day send nothing more; a customer who did not opt in
gets nothing. Mail goes to a real SMTP server (aiosmtpd), webhooks to a real HTTP server."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pypdf import PdfReader

from careline.coordinator.api import Caller, Context
from careline.coordinator.api import notify as api
from careline.coordinator.datadir import Settings
from careline.coordinator.incidents import IncidentDesk
from careline.coordinator.notify.sender import Notifier
from careline.coordinator.policy.config import load_policy_data
from careline.coordinator.policy.overrides import PolicyLayers
from careline.coordinator.storage import fleet
from careline.coordinator.storage import notify as store
from careline.coordinator.storage.db import Database
from tests.notify.receivers import Mailbox, WebhookReceiver

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class World:
    def __init__(self, db: Database, notifier: Notifier, new_notifier: Callable[[], Notifier],
                 mailbox: Mailbox, hook: WebhookReceiver) -> None:
        self.db, self.notifier, self.mailbox, self.hook = db, notifier, mailbox, hook
        self.new_notifier = new_notifier  # another process's, or this one's after a restart
        local = utcnow().astimezone(HCM)
        self.month = f"{local.year:04d}-{local.month:02d}"  # the month the machines joined in
        after = (local.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        self.first = dt.datetime.combine(after.date(), dt.time(9), HCM).astimezone(dt.UTC)

    async def tick(self, notifier: Notifier, now: dt.datetime) -> int:
        """One round of the notifier at `now`: periodic messages, then everything due (the
        outbox's quiet hours may hold a message until the next business morning)."""
        await notifier.periodic(now)
        return await notifier.deliver_due(now + dt.timedelta(days=10))


@pytest.fixture
async def world(database: str, tmp_path: Path) -> AsyncIterator[World]:
    db = Database(database)
    await db.migrate()
    desk = IncidentDesk(db, PolicyLayers(*load_policy_data(None)), dt.timedelta(seconds=90))
    vendor = Settings(vendor_name="Phần mềm Kế Toán Việt")

    def new_notifier() -> Notifier:
        return Notifier(db, tmp_path, desk, vendor)

    notifier = new_notifier()
    # What the notify methods use of the services: the database and the notifier.
    services = types.SimpleNamespace(db=db, notifier=notifier)
    ctx = Context(services, Caller("lan", "admin"), utcnow())  # type: ignore[arg-type]
    with Mailbox() as mailbox, WebhookReceiver(None) as hook:
        async with db.transaction() as conn:
            for name, hosts in (("Minh Anh", ["KETOAN-01", "KETOAN-02"]), ("Hoa Binh", ["HB-PC"])):
                customer = await fleet.add_customer(conn, name, "Asia/Ho_Chi_Minh", utcnow())
                for host in hosts:
                    await fleet.add_agent(conn, agent_id=os.urandom(20).hex(),
                                          customer_id=customer.id, public_key=os.urandom(32),
                                          hostname=host, os="Windows 11", agent_version="1.0",
                                          now=utcnow())
        await api.add_channel(ctx, api.AddChannel(
            name="mail", kind="email", host="127.0.0.1", port=mailbox.port, security="none",
            from_addr="care@ketoanviet.vn", rate_per_minute=0))
        await api.add_channel(ctx, api.AddChannel(name="chat", kind="apprise",
                                                  url=hook.url.replace("http://", "json://")))
        # Minh Anh's contact opts in (in Vietnamese; the default events include the report);
        # Hoa Binh's only hears of visits.
        optin = await api.customer_optin(ctx, api.OptIn(
            customer="Minh Anh", channel="mail", address="giamdoc@minhanh.vn", language="vi"))
        assert "report.care_monthly" in optin["route"]["events"]
        await api.customer_optin(ctx, api.OptIn(
            customer="Hoa Binh", channel="mail", address="ketoan@hoabinh.vn", language="vi",
            events="visit.created"))
        # The vendor's managers get every customer's report as a summary in their chat room.
        managers = await api.add_recipient(ctx, api.AddRecipient(
            name="managers", channel="chat", language="en", timezone="UTC",
            workdays="mon,tue,wed,thu,fri,sat,sun", opens="00:00", closes="23:59"))
        await api.add_route(ctx, api.AddRoute(recipient=str(managers["id"]),
                                              events="report.care_monthly"))
        yield World(db, notifier, new_notifier, mailbox, hook)
    await db.close()


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


async def test_opted_in_customer_gets_last_months_report_once(world: World) -> None:
    notifier = world.notifier
    # The day before the 1st: nothing is due.
    assert await world.tick(notifier, world.first - dt.timedelta(days=1)) == 0

    # Two coordinator processes' notifiers queue it at the same moment: once.
    other = world.new_notifier()
    queued = await asyncio.gather(notifier.care_reports(world.first), other.care_reports(world.first))
    assert sorted(queued[0] + queued[1]) == [(1, world.month), (2, world.month)]
    assert await world.tick(notifier, world.first) == 3  # Minh Anh's mail, two chat summaries
    assert len(world.mailbox.messages) == 1
    mail = world.mailbox.messages[0]
    assert mail["To"] == "giamdoc@minhanh.vn"
    assert mail["Subject"] == f"Báo cáo chăm sóc tháng {world.month}: Minh Anh"
    body = mail.get_body(("plain",))
    assert body is not None
    assert "KETOAN-01" in body.get_content()
    assert "đính kèm" in body.get_content()
    pdfs = [part for part in mail.iter_attachments() if part.get_content_type() == "application/pdf"]
    assert [p.get_filename() for p in pdfs] == [f"careline-care-report-{world.month}.pdf"]
    text = pdf_text(pdfs[0].get_content())
    assert "KETOAN-01" in text
    assert "KETOAN-02" in text
    assert "HB-PC" not in text
    assert "Minh Anh" in text
    assert "Phần mềm Kế Toán Việt" in text
    assert "Báo cáo chăm sóc" in text  # in the contact's language, Vietnamese

    # The managers' chat room: a summary per customer, no file.
    summaries = sorted((m["title"], m["message"]) for m in world.hook.received)
    assert [t for t, _ in summaries] == [f"Care report {world.month}: Hoa Binh",
                                         f"Care report {world.month}: Minh Anh"]
    assert "HB-PC" in summaries[0][1]
    assert "web console" in summaries[0][1]

    # Again the same day, after a restart (a fresh notifier), and the next day: nothing more.
    assert await world.tick(notifier, world.first + dt.timedelta(minutes=1)) == 0
    restarted = world.new_notifier()
    assert await restarted.care_reports(world.first + dt.timedelta(minutes=2)) == []
    assert await world.tick(restarted, world.first + dt.timedelta(days=1)) == 0
    assert len(world.mailbox.messages) == 1
    assert len(world.hook.received) == 2


async def test_printing_a_report_renews_the_claims_lease(world: World) -> None:
    """PDFs take seconds each: while a batch prints, the rest of the claim stays this process's
    (another would take over rows whose lease ran out and send them twice)."""
    notifier = world.notifier
    await notifier.periodic(world.first)
    claimed_at = world.first - dt.timedelta(days=30)  # a lease that ran out long ago ...
    groups = await notifier.claim(world.first + dt.timedelta(days=10))
    async with world.db.transaction() as conn:
        await store.extend_claim(conn, groups[0][0]["claim"], claimed_at)
    mail = next(g for g in groups if g[0]["recipient_id"] == 1)
    async with world.db.connect() as conn:
        channel = await store.get_channel(conn, mail[0]["channel_id"])
        recipient = await store.get_recipient(conn, mail[0]["recipient_id"])
    attached = await notifier.attachments(channel, mail, recipient)
    assert attached[0].data.startswith(b"%PDF")
    # ... is renewed for every row of the claim when printing starts.
    async with world.db.connect() as conn:
        rows = await store.list_notifications(conn, status="sending")
    assert len(rows) == 3
    assert all(r["claimed_until"] > utcnow() + dt.timedelta(seconds=30) for r in rows)
