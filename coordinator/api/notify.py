"""Notification methods: channels (admin), recipients and routes, customer opt-in, status."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from typing import Any

import msgspec

from careline.coordinator import i18n
from careline.coordinator.api import Context, method
from careline.coordinator.notify import channels, policy
from careline.coordinator.notify.events import WEEKDAYS, recipient_calendar
from careline.coordinator.storage import fleet as fstore
from careline.coordinator.storage import notify as store
from careline.shared.errors import ConfigError


class AddChannel(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    kind: str
    rate_per_minute: int = 30
    # e-mail
    host: str | None = None
    port: int | None = None
    security: str | None = None
    username: str | None = None
    password: str | None = None
    from_addr: str | None = None
    ca_file: str | None = None  # CA to verify the SMTP server with (default: the system's)
    # webhook (url) and apprise (url, a secret: it holds the service's token)
    url: str | None = None
    secret: str | None = None


def _channel_view(channel: store.Channel) -> dict[str, Any]:
    view = dataclasses.asdict(channel)
    view["secret"] = "set" if channel.secret else "none"  # never the secret itself
    return view


@method("notify.channels.add", "admin", AddChannel)
async def add_channel(ctx: Context, p: AddChannel) -> dict[str, Any]:
    generated = None
    if p.kind == "email":
        secret = p.password or ""
        config = {"host": p.host, "port": p.port, "security": p.security, "username": p.username,
                  "from_addr": p.from_addr, "ca_file": p.ca_file}
    elif p.kind == "webhook":
        secret = p.secret or ""
        if not secret:
            secret = generated = secrets.token_urlsafe(32)
        config = {"url": p.url}
    else:
        secret, config = p.url or "", {}
    config = channels.check_config(p.kind, config, secret)
    if p.rate_per_minute < 0:
        raise ConfigError("--rate must be 0 (no limit) or more messages per minute")
    sealed = ctx.services.notifier.secrets.encrypt(secret)
    async with ctx.services.db.transaction() as conn:
        channel_id = await store.add_channel(conn, {
            "name": p.name, "kind": p.kind, "config": config, "secret": sealed,
            "rate_per_minute": p.rate_per_minute, "created_by": ctx.caller.name,
            "created_at": ctx.now})
        await ctx.audit(conn, "notify.channel.add", f"channel:{p.name}", kind=p.kind, **config)
        view = _channel_view(await store.get_channel(conn, channel_id))
    if generated:
        view["webhook_secret"] = generated  # shown once, for the receiver to verify signatures
    return view


@method("notify.channels.list", "viewer")
async def list_channels(ctx: Context, p: Any) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        return [_channel_view(c) for c in await store.list_channels(conn)]


class ChannelRef(msgspec.Struct, forbid_unknown_fields=True):
    name: str


@method("notify.channels.remove", "admin", ChannelRef)
async def remove_channel(ctx: Context, p: ChannelRef) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        channel = await store.get_channel(conn, p.name)
        await store.remove_channel(conn, channel.id)
        await ctx.audit(conn, "notify.channel.remove", f"channel:{channel.name}")
    return {"removed": channel.name}


class TestChannel(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    address: str = ""


@method("notify.channels.test", "admin", TestChannel)
async def test_channel(ctx: Context, p: TestChannel) -> dict[str, Any]:
    """Send one test message now (not through the outbox) and say whether it went."""
    notifier = ctx.services.notifier
    async with ctx.services.db.connect() as conn:
        channel = await store.get_channel(conn, p.name)
    delivery = f"test-{secrets.token_hex(6)}"
    text = f"Careline test message from the coordinator ({ctx.now:%Y-%m-%d %H:%M}Z)\n"
    message = channels.Message(delivery, p.address, "Careline test", text,
                               {"delivery": delivery, "event": "test", "text": text})
    if channel.kind == "email" and not p.address:
        raise ConfigError("testing an e-mail channel needs --to ADDRESS")
    error = None
    try:
        await channels.deliver(channel.kind, channel.config,
                               notifier.secrets.decrypt(channel.secret), message)
    except channels.DeliveryError as exc:
        error = str(exc)
    async with ctx.services.db.transaction() as conn:
        await ctx.audit(conn, "notify.channel.test", f"channel:{channel.name}",
                        ok=error is None, error=error)
    return {"channel": channel.name, "ok": error is None, "error": error, "delivery": delivery}


class AddRecipient(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    channel: str
    address: str = ""
    language: str = "vi"
    timezone: str = "Asia/Ho_Chi_Minh"
    workdays: str = "mon,tue,wed,thu,fri,sat"
    opens: str = "08:00"
    closes: str = "17:30"
    customer: str | None = None  # a customer's own contact
    technician: str | None = None  # whose visits the digest lists


async def _add_recipient(ctx: Context, conn: Any, p: AddRecipient) -> int:
    if p.language not in i18n.LANGUAGES:
        raise ConfigError(f"--language must be one of {', '.join(i18n.LANGUAGES)}")
    days = [d.strip() for d in p.workdays.split(",") if d.strip()]
    if not days or set(days) - set(WEEKDAYS):
        raise ConfigError(f"--workdays must be a comma list of {','.join(WEEKDAYS)}")
    values: dict[str, Any] = {"name": p.name, "address": p.address, "language": p.language,
              "timezone": p.timezone, "workdays": ",".join(days), "opens": p.opens,
              "closes": p.closes, "technician": p.technician, "created_at": ctx.now}
    try:
        recipient_calendar(p.timezone, values["workdays"], p.opens, p.closes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    channel = await store.get_channel(conn, p.channel)
    if channel.kind == "email" and "@" not in p.address:
        raise ConfigError("an e-mail recipient needs --address NAME@DOMAIN")
    values["channel_id"] = channel.id
    values["customer_id"] = await fstore.customer_id_of(conn, p.customer)
    recipient_id = await store.add_recipient(conn, values)
    await ctx.audit(conn, "notify.recipient.add", f"recipient:{p.name}", channel=channel.name,
                    customer=p.customer, language=p.language)
    return recipient_id


@method("notify.recipients.add", "admin", AddRecipient)
async def add_recipient(ctx: Context, p: AddRecipient) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        return dataclasses.asdict(await store.get_recipient(conn, await _add_recipient(ctx, conn, p)))


@method("notify.recipients.list", "viewer")
async def list_recipients(ctx: Context, p: Any) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        return [dataclasses.asdict(r) for r in await store.list_recipients(conn)]


class RecipientRef(msgspec.Struct, forbid_unknown_fields=True):
    name: str


@method("notify.recipients.remove", "admin", RecipientRef)
async def remove_recipient(ctx: Context, p: RecipientRef) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        recipient = await store.get_recipient(conn, p.name)
        await store.remove_recipient(conn, recipient.id)
        await ctx.audit(conn, "notify.recipient.remove", f"recipient:{recipient.name}")
    return {"removed": recipient.name}


class AddRoute(msgspec.Struct, forbid_unknown_fields=True):
    recipient: str
    events: str = "*"
    customer: str | None = None
    min_severity: str = "low"
    kinds: str = ""


async def _add_route(ctx: Context, conn: Any, recipient_id: int, p: AddRoute) -> dict[str, Any]:
    events = policy.Route.parse_list(p.events)
    try:
        policy.validate_events(events or ())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if p.min_severity not in policy.SEVERITIES:
        raise ConfigError(f"--min-severity must be one of {', '.join(policy.SEVERITIES)}")
    customer_id = await fstore.customer_id_of(conn, p.customer)
    route_id = await store.add_route(conn, {
        "recipient_id": recipient_id, "events": ",".join(sorted(events)) if events else "*",
        "customer_id": customer_id, "min_severity": p.min_severity, "kinds": p.kinds,
        "created_at": ctx.now})
    await ctx.audit(conn, "notify.route.add", f"route:{route_id}", recipient=p.recipient,
                    events=p.events, customer=p.customer, min_severity=p.min_severity)
    return next(dataclasses.asdict(r) for r in await store.list_routes(conn) if r.id == route_id)


@method("notify.routes.add", "admin", AddRoute)
async def add_route(ctx: Context, p: AddRoute) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        recipient = await store.get_recipient(conn, p.recipient)
        return await _add_route(ctx, conn, recipient.id, p)


@method("notify.routes.list", "viewer")
async def list_routes(ctx: Context, p: Any) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        return [dataclasses.asdict(r) for r in await store.list_routes(conn)]


class RouteRef(msgspec.Struct, forbid_unknown_fields=True):
    id: int


@method("notify.routes.remove", "admin", RouteRef)
async def remove_route(ctx: Context, p: RouteRef) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        await store.remove_route(conn, p.id)
        await ctx.audit(conn, "notify.route.remove", f"route:{p.id}")
    return {"removed": p.id}


class OptIn(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    channel: str
    address: str
    language: str = "vi"
    events: str = ",".join(sorted(policy.CUSTOMER_EVENTS))


@method("notify.customers.optin", "technician", OptIn)
async def customer_optin(ctx: Context, p: OptIn) -> dict[str, Any]:
    """A customer's contact hears of visits, installed updates, coverage ending, and gets the
    monthly care report."""
    events = policy.Route.parse_list(p.events) or policy.CUSTOMER_EVENTS
    if events - policy.CUSTOMER_EVENTS:
        raise ConfigError(f"customers may hear of {', '.join(sorted(policy.CUSTOMER_EVENTS))}")
    async with ctx.services.db.transaction() as conn:
        customer = await fstore.get_customer(conn, p.customer)
        recipient_id = await _add_recipient(ctx, conn, AddRecipient(
            name=f"{customer.name} <{p.address}>", channel=p.channel, address=p.address,
            language=p.language, timezone=customer.timezone,
            workdays=customer.workdays or "mon,tue,wed,thu,fri,sat",
            opens=customer.opens or "08:00", closes=customer.closes or "17:30",
            customer=str(customer.id)))
        route = await _add_route(ctx, conn, recipient_id, AddRoute(
            recipient=str(recipient_id), events=",".join(sorted(events)),
            customer=str(customer.id)))
        return {"recipient": dataclasses.asdict(await store.get_recipient(conn, recipient_id)),
                "route": route}


@method("notify.status", "viewer")
async def status(ctx: Context, p: Any) -> dict[str, Any]:
    """Every channel's health and backlog: a failing channel is itself visible."""
    async with ctx.services.db.connect() as conn:
        counts = await store.counts_by_channel(conn)
        oldest = await store.oldest_pending(conn)
        chans = await store.list_channels(conn)
    rows = []
    for channel in chans:
        c = counts.get(channel.id, {})
        waiting = oldest.get(channel.id)
        rows.append({
            "channel": channel.name, "kind": channel.kind,
            "healthy": channel.healthy, "failures": channel.failures,
            "last_error": channel.last_error, "last_success_at": channel.last_success_at,
            "pending": c.get("pending", 0) + c.get("sending", 0), "sent": c.get("sent", 0),
            "dead": c.get("dead", 0), "in_digest": c.get("digest", 0),
            "oldest_pending_seconds": None if waiting is None
            else round((ctx.now - waiting) / dt.timedelta(seconds=1)),
        })
    return {"channels": rows, "unhealthy": [r["channel"] for r in rows if not r["healthy"]]}


class ListNotifications(msgspec.Struct, forbid_unknown_fields=True):
    status: str | None = None
    limit: int = 50


@method("notify.list", "viewer", ListNotifications)
async def list_notifications(ctx: Context, p: ListNotifications) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        rows = await store.list_notifications(conn, p.status, min(p.limit, 1000))
    return [{k: v for k, v in r.items() if k not in ("facts", "claim")} for r in rows]
