"""Queries for notifications: channels, recipients, routes and the outbox (issue 14)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.storage.fleet import (
    Row,
    insert_ignoring_duplicates,
    insert_row,
    rows_of,
    typed_first,
    typed_rows,
)
from careline.coordinator.storage.schema import (
    customers,
    notifications,
    notify_channels,
    notify_recipients,
    notify_routes,
)
from careline.shared.errors import Conflict, NotFound

# Statuses of a notification that count as "this thread was told already".
TOLD = ("pending", "sending", "sent", "dead")


# ----------------------------------------------------------------------------- channels
@dataclass(frozen=True, slots=True)
class Channel:
    """A way to send notifications (an SMTP server, a webhook, an apprise URL) and its
    health: failing channels are shown, not silently dropped."""

    id: int
    name: str
    kind: str  # email, webhook, apprise
    config: dict[str, Any]  # what is not secret
    secret: str  # Fernet token of the secret part ("" when none)
    rate_per_minute: int
    healthy: bool
    failures: int
    last_error: str | None
    last_success_at: dt.datetime | None
    created_by: str
    created_at: dt.datetime


async def add_channel(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return await insert_row(conn, notify_channels, values, f"channel {values['name']!r}")


async def list_channels(conn: AsyncConnection) -> list[Channel]:
    return typed_rows(await conn.execute(sa.select(notify_channels).order_by(notify_channels.c.id)),
                      Channel)


async def get_channel(conn: AsyncConnection, ref: str | int) -> Channel:
    column = notify_channels.c.id if isinstance(ref, int) or str(ref).isdigit() else notify_channels.c.name
    value = int(ref) if column is notify_channels.c.id else ref
    found = await typed_first(conn, sa.select(notify_channels).where(column == value), Channel)
    if found is None:
        raise NotFound(f"no notification channel {ref!r}")
    return found


async def remove_channel(conn: AsyncConnection, channel_id: int) -> None:
    used = await conn.scalar(sa.select(sa.func.count()).select_from(notify_recipients)
                             .where(notify_recipients.c.channel_id == channel_id))
    if used:
        raise Conflict(f"{used} recipients use this channel; remove them first")
    await conn.execute(notifications.delete().where(notifications.c.channel_id == channel_id))
    await conn.execute(notify_channels.delete().where(notify_channels.c.id == channel_id))


async def update_channel(conn: AsyncConnection, channel_id: int, **values: Any) -> None:
    await conn.execute(notify_channels.update().where(notify_channels.c.id == channel_id)
                       .values(**values))


# ----------------------------------------------------------------------------- recipients
@dataclass(frozen=True, slots=True)
class Recipient:
    """Who hears, through which channel, in which language and business hours; with its
    channel's and its customer's names."""

    id: int
    name: str
    channel_id: int
    address: str  # an e-mail address, or "" for a webhook or chat channel
    language: str
    timezone: str
    workdays: str  # e.g. "mon-fri"
    opens: str  # "08:00"
    closes: str
    customer_id: int | None  # a customer's own contact: hears only about that customer
    technician: str | None  # whose visits the daily digest lists
    created_at: dt.datetime
    channel: str
    customer: str | None


async def add_recipient(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return await insert_row(conn, notify_recipients, values, f"recipient {values['name']!r}")


def _recipients_query() -> sa.Select[Any]:
    return (sa.select(notify_recipients, notify_channels.c.name.label("channel"),
                      customers.c.name.label("customer"))
            .join(notify_channels, notify_channels.c.id == notify_recipients.c.channel_id)
            .outerjoin(customers, customers.c.id == notify_recipients.c.customer_id)
            .order_by(notify_recipients.c.id))


async def list_recipients(conn: AsyncConnection) -> list[Recipient]:
    return typed_rows(await conn.execute(_recipients_query()), Recipient)


async def get_recipient(conn: AsyncConnection, ref: str | int) -> Recipient:
    column = (notify_recipients.c.id if isinstance(ref, int) or str(ref).isdigit()
              else notify_recipients.c.name)
    value = int(ref) if column is notify_recipients.c.id else ref
    found = await typed_first(conn, _recipients_query().where(column == value), Recipient)
    if found is None:
        raise NotFound(f"no notification recipient {ref!r}")
    return found


async def remove_recipient(conn: AsyncConnection, recipient_id: int) -> None:
    """The recipient, its routes and its notifications (sent or not) go."""
    await conn.execute(notify_routes.delete().where(notify_routes.c.recipient_id == recipient_id))
    await conn.execute(notifications.delete().where(notifications.c.recipient_id == recipient_id))
    await conn.execute(notify_recipients.delete().where(notify_recipients.c.id == recipient_id))


# ----------------------------------------------------------------------------- routes
@dataclass(frozen=True, slots=True)
class Route:
    """Which events reach a recipient, with the recipient's and customer's names."""

    id: int
    recipient_id: int
    events: str  # comma list of event kinds, or *
    customer_id: int | None  # None: every customer
    min_severity: str
    kinds: str  # incident kinds, comma list; "" any
    created_at: dt.datetime
    recipient: str
    customer: str | None


async def add_route(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return await insert_row(conn, notify_routes, values, "route")


async def list_routes(conn: AsyncConnection) -> list[Route]:
    query = (sa.select(notify_routes, notify_recipients.c.name.label("recipient"),
                       customers.c.name.label("customer"))
             .join(notify_recipients, notify_recipients.c.id == notify_routes.c.recipient_id)
             .outerjoin(customers, customers.c.id == notify_routes.c.customer_id)
             .order_by(notify_routes.c.id))
    return typed_rows(await conn.execute(query), Route)


async def remove_route(conn: AsyncConnection, route_id: int) -> None:
    result = await conn.execute(notify_routes.delete().where(notify_routes.c.id == route_id))
    if not result.rowcount:
        raise NotFound(f"no route {route_id}")


# ----------------------------------------------------------------------------- outbox
async def insert_notifications(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> int:
    """Store notifications; one whose key exists already (the same event again) is skipped.
    Returns how many were new."""
    if not rows:
        return 0
    inserted = 0
    for row in rows:  # one statement each: a multi-row insert's count is not reliable
        result = await conn.execute(insert_ignoring_duplicates(conn, notifications).values(**row))
        inserted += max(0, result.rowcount or 0)
    return inserted


async def told(conn: AsyncConnection, recipient_ids: Sequence[int], thread: str) -> set[int]:
    """Which of the recipients already have a notification of `thread` of their own."""
    if not thread or not recipient_ids:
        return set()
    query = (sa.select(notifications.c.recipient_id).distinct()
             .where(notifications.c.thread == thread,
                    notifications.c.recipient_id.in_(list(recipient_ids)),
                    notifications.c.status.in_(TOLD)))
    return set((await conn.execute(query)).scalars())


def _claimable(now: dt.datetime) -> Any:
    pending = sa.and_(notifications.c.status == "pending", notifications.c.next_attempt_at <= now)
    abandoned = sa.and_(notifications.c.status == "sending", notifications.c.claimed_until < now)
    return sa.or_(pending, abandoned)


async def claimable(conn: AsyncConnection, now: dt.datetime, fold_before: dt.datetime,
                    limit: int) -> list[Row]:
    """Due notifications, locked for this transaction; other coordinator processes skip
    them (PostgreSQL SKIP LOCKED; SQLite has a single writer). A foldable one is due only
    once its fold window has passed, and then brings every pending one of its fold."""
    query = (sa.select(notifications)
             .where(_claimable(now),
                    sa.or_(notifications.c.fold_key.is_(None),
                           notifications.c.created_at <= fold_before))
             # Critical first: a backlog (a storm, a channel back from an outage) must not
             # hold up a server room on fire.
             .order_by(sa.case((notifications.c.severity == "critical", 0), else_=1),
                       notifications.c.id).limit(limit)
             .with_for_update(skip_locked=True))
    rows = rows_of(await conn.execute(query))
    folds = {(r["recipient_id"], r["fold_key"]) for r in rows if r["fold_key"] and not r["delivery"]}
    if folds:
        seen = {r["id"] for r in rows}
        for recipient_id, fold_key in folds:
            more = (sa.select(notifications)
                    .where(notifications.c.status == "pending",
                           notifications.c.recipient_id == recipient_id,
                           notifications.c.fold_key == fold_key,
                           notifications.c.delivery.is_(None))
                    .with_for_update(skip_locked=True))
            rows += [r for r in rows_of(await conn.execute(more)) if r["id"] not in seen]
    return rows


async def extend_claim(conn: AsyncConnection, claim: str, until: dt.datetime) -> None:
    """Keep a claim's unsent rows ours while slow work (printing a PDF) goes on, so no other
    process takes them over and sends them twice."""
    await conn.execute(notifications.update()
                       .where(notifications.c.claim == claim, notifications.c.status == "sending")
                       .values(claimed_until=until))


async def set_notifications(conn: AsyncConnection, ids: Sequence[int], **values: Any) -> None:
    await conn.execute(notifications.update().where(notifications.c.id.in_(list(ids))).values(**values))


async def list_notifications(conn: AsyncConnection, status: str | None = None, limit: int = 50) -> list[Row]:
    query = (sa.select(notifications, notify_recipients.c.name.label("recipient"),
                       notify_channels.c.name.label("channel"))
             .join(notify_recipients, notify_recipients.c.id == notifications.c.recipient_id)
             .join(notify_channels, notify_channels.c.id == notifications.c.channel_id)
             .order_by(notifications.c.id.desc()).limit(limit))
    if status:
        query = query.where(notifications.c.status == status)
    return rows_of(await conn.execute(query))


async def counts_by_channel(conn: AsyncConnection) -> dict[int, dict[str, int]]:
    query = (sa.select(notifications.c.channel_id, notifications.c.status, sa.func.count())
             .group_by(notifications.c.channel_id, notifications.c.status))
    counts: dict[int, dict[str, int]] = {}
    for channel_id, status, count in (await conn.execute(query)).all():
        counts.setdefault(channel_id, {})[status] = int(count)
    return counts


async def oldest_pending(conn: AsyncConnection) -> dict[int, dt.datetime]:
    query = (sa.select(notifications.c.channel_id, sa.func.min(notifications.c.created_at))
             .where(notifications.c.status.in_(("pending", "sending")))
             .group_by(notifications.c.channel_id))
    result: dict[int, dt.datetime] = {}
    for channel_id, oldest in (await conn.execute(query)).all():
        if oldest is not None:
            if isinstance(oldest, str):  # SQLite returns the aggregate untyped
                oldest = dt.datetime.fromisoformat(oldest)
            result[channel_id] = oldest if oldest.tzinfo else oldest.replace(tzinfo=dt.UTC)
    return result


async def digest_items(conn: AsyncConnection, recipient_id: int) -> list[Row]:
    query = (sa.select(notifications)
             .where(notifications.c.recipient_id == recipient_id,
                    notifications.c.status == "digest")
             .order_by(notifications.c.id))
    return rows_of(await conn.execute(query))


async def customer_contacts(conn: AsyncConnection) -> dict[int, list[str]]:
    """Each customer's own contacts ("name <address>"), for whoever must call them: the
    recipients a customer opted in with (`careline notify recipients add --customer`)."""
    result = await conn.execute(
        sa.select(notify_recipients.c.customer_id, notify_recipients.c.name,
                  notify_recipients.c.address)
        .where(notify_recipients.c.customer_id.is_not(None))
        .order_by(notify_recipients.c.customer_id, notify_recipients.c.name))
    contacts: dict[int, list[str]] = {}
    for customer_id, name, address in result:
        contacts.setdefault(customer_id, []).append(f"{name} <{address}>" if address else name)
    return contacts
