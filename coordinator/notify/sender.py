"""The sender: delivers the outbox, and queues the periodic messages (overdue, digests,
monthly care reports).

One loop per coordinator process. Each round claims due notifications in a short
transaction (status "sending", a claim id and a lease; PostgreSQL's SKIP LOCKED keeps
several processes off each other's rows), sends them, and records each message's result in
a second transaction: sent, or back to pending with exponential backoff, or dead after
`max_attempts`. A process killed after claiming leaves rows whose lease runs out; they are
claimed again and sent with the same delivery id (the e-mail's Message-ID, the webhook's
X-Careline-Delivery header), so a receiver can drop the rare copy of a message that was
sent but not yet marked sent when the process died.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import time
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from careline.coordinator.notify import channels, policy
from careline.coordinator.notify.events import (
    notify,
    notify_incident,
    recipient_calendar,
    routing_policy,
)
from careline.coordinator.notify.render import render
from careline.coordinator.storage import fleet as fstore
from careline.coordinator.storage import notify as store
from careline.coordinator.storage import service
from careline.shared.errors import ConfigError

if TYPE_CHECKING:
    from careline.coordinator.datadir import Settings
    from careline.coordinator.incidents import IncidentDesk
    from careline.coordinator.storage.db import Database

log = logging.getLogger("careline.coordinator.notify")

# Test hook: stop dead after committing a claim, before sending (the test then kill -9s).
PAUSE_AFTER_CLAIM_ENV = "CARELINE_NOTIFY_TEST_PAUSE_AFTER_CLAIM"
# Messages per channel sent between two records of their results (one SMTP session).
SEND_BATCH = 25


@dataclass(frozen=True)
class NotifySettings:
    """DATA/notify.toml (every key optional)."""

    poll_seconds: float = 1.0
    lease_seconds: float = 60.0  # a claim not finished by then is taken over
    fold_window_seconds: float = 30.0  # mass events wait this long to be counted together
    batch: int = 200  # notifications claimed per round
    parallel: int = 8  # webhook / chat messages in flight per channel
    # Messages a second this process sends at most (0: no limit): a backlog drains at this
    # pace so that agents' heartbeats keep most of the coordinator (bench/notify.py).
    max_per_second: float = 50.0
    max_attempts: int = 10
    backoff_seconds: float = 10.0  # first retry; doubles up to backoff_cap_seconds
    backoff_cap_seconds: float = 3600.0
    unhealthy_after: int = 5  # failures in a row that mark a channel unhealthy
    periodic_seconds: float = 30.0  # overdue checks, digests, weekly lists
    expiring_within_days: int = 30

    @classmethod
    def load(cls, path: Path) -> NotifySettings:
        if not path.exists():
            return cls()
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        if set(raw) - known:
            raise ConfigError(f"{path}: unknown settings {sorted(set(raw) - known)}")
        return cls(**raw)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def care_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """What a care report notification says by itself (a chat message, a webhook, the e-mail's
    text); the PDF is printed again when an e-mail is sent."""
    return {"customer_id": report["customer"]["id"], "customer": report["customer"]["name"],
            "month": report["month"], "machines": [m["hostname"] for m in report["machines"]],
            "totals": dict(report["totals"]),
            "attention": [a["hostname"] for a in report["attention"]],
            "renewal": [r["hostname"] for r in report["renewal"]]}


class Notifier:
    def __init__(self, db: Database, data: Path, desk: IncidentDesk, vendor: Settings) -> None:
        self.db = db
        self.data = data
        self.desk = desk
        self.vendor = vendor  # the coordinator's settings: the vendor's name and logo in reports
        self.settings = NotifySettings.load(data / "notify.toml")
        self.secrets = channels.Secrets(data / "notify.key")
        self.overrides = data / "templates" / "notify"
        self.throttle = policy.Throttle()
        self._periodic_done: set[str] = set()  # keys queued by this process already
        self._paced_until = 0.0  # time.monotonic() before which the pace allows no more

    # ------------------------------------------------------------------ loop
    async def run_forever(self) -> None:
        """Poll the outbox: every process (and every transaction) queues into the database,
        so an indexed query every `poll_seconds` is the one signal they all share."""
        last_periodic = 0.0
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                if time.monotonic() - last_periodic >= self.settings.periodic_seconds:
                    last_periodic = time.monotonic()
                    await self.periodic(utcnow())
                while await self.deliver_due(utcnow()) >= self.claim_limit:
                    pass
            except Exception:
                log.exception("notification round failed; will retry")

    # ------------------------------------------------------------------ delivery
    async def claim(self, now: dt.datetime) -> list[list[dict[str, Any]]]:
        """Claim due notifications; returns them grouped into messages."""
        token = uuid.uuid4().hex
        fold_before = now - dt.timedelta(seconds=self.settings.fold_window_seconds)
        async with self.db.transaction() as conn:
            rows = await store.claimable(conn, now, fold_before, self.claim_limit)
            groups = policy.fold_groups(rows)
            until = now + dt.timedelta(seconds=self.settings.lease_seconds)
            for group in groups:
                delivery = policy.delivery_id(group)
                await store.set_notifications(conn, [r["id"] for r in group], status="sending",
                                              claim=token, claimed_until=until, delivery=delivery)
                for row in group:
                    row.update(claim=token, delivery=delivery)
        return groups

    @property
    def claim_limit(self) -> int:
        """Rows per claim: never more than the pace sends in half a lease, so a claim is
        finished long before another process may take it over."""
        rate = self.settings.max_per_second
        if rate <= 0:
            return self.settings.batch
        return max(1, min(self.settings.batch, int(rate * self.settings.lease_seconds / 2)))

    async def _pace(self, count: int) -> None:
        """Wait until `count` more messages fit under max_per_second."""
        rate = self.settings.max_per_second
        if rate <= 0:
            return
        now = time.monotonic()
        start = max(self._paced_until, now)
        self._paced_until = start + count / rate
        if start > now:
            await asyncio.sleep(start - now)

    async def deliver_due(self, now: dt.datetime) -> int:
        """One round: claim, send, record. Returns how many notifications were claimed."""
        groups = await self.claim(now)
        if not groups:
            return 0
        if os.environ.get(PAUSE_AFTER_CLAIM_ENV):
            log.warning("test hook: claimed %d notifications; pausing before sending",
                        sum(map(len, groups)))
            await asyncio.Event().wait()
        async with self.db.connect() as conn:
            chans = {c.id: c for c in await store.list_channels(conn)}
            people = {r.id: r for r in await store.list_recipients(conn)}
        by_channel: dict[int, list[list[dict[str, Any]]]] = {}
        for group in groups:
            by_channel.setdefault(group[0]["channel_id"], []).append(group)
        await asyncio.gather(*(self._send_channel(chans[cid], chans, mine, people)
                               for cid, mine in by_channel.items()))
        return sum(map(len, groups))

    async def _send_channel(self, channel: store.Channel, chans: dict[int, store.Channel],
                            groups: list[list[dict[str, Any]]],
                            people: Mapping[int, store.Recipient]) -> None:
        """Send one channel's messages in batches (one SMTP session each), recording the
        results after every batch so a crash repeats at most one batch."""
        secret = self.secrets.decrypt(channel.secret)
        for start in range(0, len(groups), SEND_BATCH):
            batch = groups[start:start + SEND_BATCH]
            results: list[str | float | None] = []
            sending: list[tuple[int, channels.Message]] = []
            for group in batch:
                wait = self.throttle.wait(channel.id, channel.rate_per_minute, time.monotonic())
                if wait > 0:
                    results.append(wait)
                    continue
                self.throttle.record(channel.id, time.monotonic())
                try:
                    recipient = people[group[0]["recipient_id"]]
                    attachments = await self.attachments(channel, group, recipient)
                    sending.append((len(results), self.message(group, recipient, attachments)))
                    results.append(None)
                except Exception as exc:  # a broken (vendor-edited) template: a failed attempt
                    log.exception("rendering notification %s failed", group[0]["delivery"])
                    results.append(f"{type(exc).__name__}: {exc}")
            if sending:
                await self._pace(len(sending))
                sent = await channels.deliver_many(channel.kind, channel.config, secret,
                                                   [m for _, m in sending], self.settings.parallel)
                for (index, _), error in zip(sending, sent, strict=True):
                    results[index] = error
            await self._record(list(zip(batch, results, strict=True)), chans)

    def message(self, group: Sequence[Mapping[str, Any]], recipient: store.Recipient,
                attachments: tuple[channels.Attachment, ...] = ()) -> channels.Message:
        first = group[0]
        items = [r["facts"] for r in group]
        subject, text = render(first["event"], items, lang=recipient.language,
                               timezone=recipient.timezone, recipient=recipient.name,
                               overrides=self.overrides if self.overrides.is_dir() else None,
                               attached=bool(attachments))
        payload = {
            "delivery": first["delivery"], "event": first["event"], "severity": first["severity"],
            "count": len(group), "recipient": recipient.name, "language": recipient.language,
            "subject": subject, "text": text, "items": items,
        }
        return channels.Message(first["delivery"], recipient.address, subject, text, payload,
                                attachments)

    async def attachments(self, channel: store.Channel, group: Sequence[Mapping[str, Any]],
                          recipient: store.Recipient) -> tuple[channels.Attachment, ...]:
        """The care report's PDF for an e-mail, printed when sent (never stored in the outbox)
        by the code `careline report care` uses, in the recipient's language."""
        first = group[0]
        if first["event"] != "report.care_monthly" or channel.kind != "email":
            return ()
        from careline.coordinator import care_report, i18n

        facts = first["facts"]
        # A claim's lease is sized for sending text; a batch of PDFs takes longer.
        async with self.db.transaction() as conn:
            await store.extend_claim(conn, first["claim"], utcnow() + dt.timedelta(
                seconds=self.settings.lease_seconds))
        data = await care_report.gather(self.db, self.desk, self.vendor,
                                        str(facts["customer_id"]), facts["month"], utcnow())
        overrides = self.data / "templates"
        # Printing takes a second or so: off the event loop the agents' connections share.
        pdf = await asyncio.to_thread(care_report.render_pdf, data,
                                      i18n.language(recipient.language),
                                      overrides if overrides.is_dir() else None)
        return (channels.Attachment(f"careline-care-report-{facts['month']}.pdf",
                                    "application/pdf", pdf),)

    async def _record(self, results: list[tuple[list[dict[str, Any]], str | float | None]],
                      chans: dict[int, store.Channel]) -> None:
        now = utcnow()
        async with self.db.transaction() as conn:
            for group, result in results:
                ids = [r["id"] for r in group]
                channel = chans[group[0]["channel_id"]]
                if isinstance(result, float):  # throttled: not an attempt
                    await store.set_notifications(conn, ids, status="pending", claim=None,
                                                  next_attempt_at=now + dt.timedelta(seconds=result))
                    continue
                if result is None:
                    await store.set_notifications(conn, ids, status="sent", sent_at=now, claim=None,
                                                  last_error=None)
                else:
                    attempts = max(r["attempts"] for r in group) + 1
                    dead = attempts >= self.settings.max_attempts
                    retry = now + policy.backoff(attempts, self.settings.backoff_seconds,
                                                 self.settings.backoff_cap_seconds)
                    await store.set_notifications(conn, ids, status="dead" if dead else "pending",
                                                  claim=None, attempts=attempts,
                                                  next_attempt_at=retry, last_error=result[:2000])
                chans[channel.id] = await self._health(conn, channel, result, now)

    async def _health(self, conn: Any, channel: store.Channel, error: str | None,
                      now: dt.datetime) -> store.Channel:
        """Record the attempt's result on the channel; returns the channel as it is now."""
        health, change = policy.after_attempt(
            policy.Health(channel.healthy, channel.failures), error is None,
            self.settings.unhealthy_after)
        values: dict[str, Any] = {"healthy": health.healthy, "failures": health.failures}
        if error is None:
            values["last_success_at"] = now
        else:
            values["last_error"] = error[:2000]
        if values["healthy"] != channel.healthy or values["failures"] != channel.failures \
                or error is None:
            await store.update_channel(conn, channel.id, **values)
        updated = dataclasses.replace(channel, **values)
        if change is not None:
            log.warning("notification channel %s is %s (%s)", channel.name, change, error or "ok")
            await fstore.record_audit(conn, actor="notify", action=f"notify.channel.{change}",
                                      target=f"channel:{channel.name}",
                                      detail={"failures": health.failures, "error": error}, now=now)
        return updated

    # ------------------------------------------------------------------ periodic messages
    async def periodic(self, now: dt.datetime) -> None:
        """Overdue incidents and visits, daily digests, weekly coverage lists and monthly care
        reports."""
        async with self.db.connect() as conn:
            routes = await store.list_routes(conn)
            people = {r.id: r for r in await store.list_recipients(conn)}
        wanted: dict[str, set[int]] = {}
        for route in routes:
            for kind in policy.Route.parse_list(route.events) or policy.EVENTS:
                wanted.setdefault(kind, set()).add(route.recipient_id)
        if wanted.keys() & {"incident.overdue", "visit.overdue"}:
            await self._overdue(now)
        for rid in sorted(wanted.get("digest.daily", set())):
            await self._digest(people[rid], now)
        for rid in sorted(wanted.get("coverage.expiring", set()) | wanted.get("coverage.ending", set())):
            await self._coverage(people[rid], now)
        if "report.care_monthly" in wanted:
            await self.care_reports(now)

    async def care_reports(self, now: dt.datetime) -> list[tuple[int, str]]:
        """Queue last month's care report for each customer some route sends it to, from the
        local 1st (policy.care_report_month). The event key is one per customer and month and
        the outbox's keys are unique, so a restart or a second coordinator process queues
        nothing more. Returns the (customer, month) pairs queued by this call."""
        from careline.coordinator import care_report

        async with self.db.connect() as conn:
            customers = [(c.id, c.timezone) for c in await fstore.list_customers(conn)]
            routes, recipients = routing_policy(await store.list_routes(conn),
                                                await store.list_recipients(conn))
        queued = []
        for customer_id, month in policy.care_reports_due(customers, routes, recipients, now):
            key = policy.care_report_key(customer_id, month)
            if key in self._periodic_done:
                continue
            data = await care_report.gather(self.db, self.desk, self.vendor, str(customer_id),
                                             month, now)
            async with self.db.transaction() as conn:
                if await notify(conn, policy.Event(
                        "report.care_monthly", key, "low", care_summary(data),
                        customer_id=customer_id), now):
                    queued.append((customer_id, month))
            self._periodic_done.add(key)
        return queued

    async def _overdue(self, now: dt.datetime) -> None:
        async with self.db.connect() as conn:
            late_visits = [v for v in await service.list_visits(conn, due_before=now)
                           if v.status == "open"]
            late_incidents = []
            for incident in await service.list_incidents(conn, open_only=True):
                decision = await service.latest_decision(conn, incident.id)
                if decision and decision.due_at < now:
                    late_incidents.append((incident, decision))
        for incident, decision in late_incidents:
            key = f"incident:{incident.id}:overdue:{decision.due_at.isoformat()}"
            if key not in self._periodic_done:
                async with self.db.transaction() as conn:
                    await notify_incident(
                        conn, incident.id, "incident.overdue", now,
                        urgent_from=await self.desk.urgent_from(
                            conn, incident.agent_id))
                self._periodic_done.add(key)
        for visit in late_visits:
            key = f"visit:{visit.id}:overdue"
            if key not in self._periodic_done:
                async with self.db.transaction() as conn:
                    incident = await service.get_incident(conn, visit.incident_id)
                    agent = await fstore.get_agent(conn, visit.agent_id)
                    facts = {"visit": visit.id, "incident": visit.incident_id,
                             "hostname": agent.hostname, "customer": agent.customer,
                             "action": visit.action, "fee_vnd": visit.fee_vnd,
                             "due_at": visit.due_at, "technician": visit.technician,
                             "kind": incident.kind}
                    await notify(conn, policy.Event(
                        "visit.overdue", key, incident.severity, facts,
                        customer_id=visit.customer_id, thread=f"incident:{visit.incident_id}",
                        incident_kind=incident.kind), now)
                self._periodic_done.add(key)

    def _due_today(self, recipient: store.Recipient, now: dt.datetime, weekly: bool) -> str | None:
        """The period key (local date, or ISO week) if the recipient's periodic message is
        due now: a business day, after opening; weekly ones on the week's first business day."""
        calendar = recipient_calendar(recipient.timezone, recipient.workdays, recipient.opens,
                                      recipient.closes)
        local = calendar.local(now)
        day = local.date()
        if not calendar.is_business_day(day) or local.time() < calendar.opens:
            return None
        if weekly:
            monday = day - dt.timedelta(days=day.weekday())
            first = monday if calendar.is_business_day(monday) else calendar.next_business_day(monday)
            if day != first:
                return None
            year, week, _ = day.isocalendar()
            return f"{year}-W{week:02d}"
        return day.isoformat()

    async def _digest(self, recipient: store.Recipient, now: dt.datetime) -> None:
        period = self._due_today(recipient, now, weekly=False)
        key = f"digest:{recipient.id}:{period}"
        if period is None or key in self._periodic_done:
            return
        async with self.db.transaction() as conn:
            items = await store.digest_items(conn, recipient.id)
            visits = []
            for v in await service.list_visits(conn):
                if v.status != "open" or v.technician not in (None, recipient.technician):
                    continue
                if recipient.customer_id is not None:
                    continue
                agent = await fstore.get_agent(conn, v.agent_id)
                visits.append({"id": v.id, "customer": agent.customer,
                               "hostname": agent.hostname, "action": v.action,
                               "due_at": v.due_at.isoformat(), "overdue": v.due_at < now})
            open_incidents = len(await service.list_incidents(conn, open_only=True))
            updates = [{"event": i["event"], **{k: i["facts"].get(k) for k in
                                                ("hostname", "customer", "incident")}}
                       for i in items]
            if visits or updates or open_incidents:
                new = await store.insert_notifications(conn, [{
                    "key": key, "recipient_id": recipient.id,
                    "channel_id": recipient.channel_id, "event": "digest.daily",
                    "severity": "low", "customer_id": None, "thread": key, "fold_key": None,
                    "facts": {"visits": visits, "open_incidents": open_incidents,
                              "updates": updates},
                    "status": "pending", "created_at": now, "next_attempt_at": now,
                }])
                if new:  # not already made today by another coordinator process
                    await store.set_notifications(conn, [i["id"] for i in items],
                                                  status="digested")
        self._periodic_done.add(key)

    async def _coverage(self, recipient: store.Recipient, now: dt.datetime) -> None:
        period = self._due_today(recipient, now, weekly=True)
        customer_facing = recipient.customer_id is not None
        event = "coverage.ending" if customer_facing else "coverage.expiring"
        key = f"coverage:{recipient.id}:{period}"
        if period is None or key in self._periodic_done:
            return
        within = self.settings.expiring_within_days
        async with self.db.transaction() as conn:
            machines = await self.desk.expiring_machines(
                conn, within, now, customer_id=recipient.customer_id)
            if machines:
                await notify(conn, policy.Event(
                    event, f"coverage:{period}:{recipient.customer_id or 'all'}", "low",
                    {"within_days": within, "machines": machines},
                    customer_id=recipient.customer_id), now)
        self._periodic_done.add(key)
