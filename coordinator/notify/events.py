"""Events into the outbox, in the caller's transaction.

`notify()` is called by the code that stores what happened (an incident opened, a job
failed, a rollout paused) with the same connection, so the notification is committed with
the event or not at all. It finds the routes that want the event, decides per recipient
whether it goes out by itself or into the digest (coordinator.notify.policy.place), and
inserts one row per recipient; the sender (coordinator.notify.sender) delivers them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.notify import policy
from careline.coordinator.policy.calendar import BusinessCalendar
from careline.coordinator.storage import fleet as fstore
from careline.coordinator.storage import notify as store
from careline.coordinator.storage import service
from careline.coordinator.storage.rollouts import Rollout, RolloutMachine
from careline.coordinator.storage.updates import JobPart

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def recipient_calendar(timezone: str, workdays: str, opens: str, closes: str) -> BusinessCalendar:
    """A recipient's business hours (as stored: "mon,tue,...", "08:00"); ValueError if bad."""
    return BusinessCalendar(
        timezone=timezone, workdays=frozenset(WEEKDAYS.index(d) for d in workdays.split(",")),
        opens=dt.time.fromisoformat(opens), closes=dt.time.fromisoformat(closes))


def _json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


_ROUTING = "careline.notify.routing"


async def _routing(conn: AsyncConnection) -> tuple[list[store.Route], list[store.Recipient]]:
    """Routes and recipients, read once per transaction: a sweep that opens 200 incidents
    queues their notifications without reading the routes 200 times."""
    sync = conn.sync_connection
    transaction = sync.get_transaction() if sync is not None else None
    cached = conn.info.get(_ROUTING)
    if transaction is not None and cached is not None and cached[0] is transaction:
        routing: tuple[list[store.Route], list[store.Recipient]] = cached[1]
        return routing
    data = (await store.list_routes(conn), await store.list_recipients(conn))
    if transaction is not None:
        conn.info[_ROUTING] = (transaction, data)
    return data


def routing_policy(route_rows: list[store.Route], recipient_rows: list[store.Recipient],
                   ) -> tuple[list[policy.Route], dict[int, policy.Recipient]]:
    """Stored routes and recipients as the pure policy's values."""
    recipients = {
        r.id: policy.Recipient(r.id, recipient_calendar(r.timezone, r.workdays, r.opens, r.closes),
                               r.customer_id)
        for r in recipient_rows}
    routes = [policy.Route(r.recipient_id, policy.Route.parse_list(r.events), r.customer_id,
                           r.min_severity, policy.Route.parse_list(r.kinds))
              for r in route_rows]
    return routes, recipients


async def notify(conn: AsyncConnection, event: policy.Event, now: dt.datetime,
                 customer_open: bool = True) -> int:
    """Queue `event` for every recipient a route sends it to; returns how many rows were new
    (an event already queued, by this process or another, adds none)."""
    route_rows, recipient_rows = await _routing(conn)
    if not route_rows:
        return 0
    rows = {r.id: r for r in recipient_rows}
    routes, recipients = routing_policy(route_rows, recipient_rows)
    wanted = policy.recipients_for(routes, recipients, event)
    if not wanted:
        return 0
    already = await store.told(conn, wanted, event.thread)
    facts = _json(dict(event.facts))
    inserts = []
    for rid in wanted:
        placement = policy.place(event, recipients[rid], now, thread_notified=rid in already,
                                 customer_open=customer_open)
        inserts.append({
            "key": f"{event.key}:r{rid}"[:200], "recipient_id": rid,
            "channel_id": rows[rid].channel_id, "event": event.kind,
            "severity": event.severity, "customer_id": event.customer_id,
            "thread": event.thread, "fold_key": event.fold_key, "facts": facts,
            "status": placement.status, "created_at": now,
            "next_attempt_at": placement.not_before,
        })
    return await store.insert_notifications(conn, inserts)


async def incident_facts(conn: AsyncConnection, incident_id: int) -> dict[str, Any]:
    """What a message about an incident says: machine, customer, decision, fee, due time."""
    incident = await service.get_incident(conn, incident_id)
    agent = await fstore.get_agent(conn, incident.agent_id)
    decision = await service.latest_decision(conn, incident_id)  # None: each term is None
    return {
        "incident": incident_id, "kind": incident.kind, "subject": incident.subject,
        "category": incident.category, "severity": incident.severity,
        "detail": incident.detail, "machine": agent.id, "hostname": agent.hostname,
        "customer": agent.customer,
        **{key: getattr(decision, key, None) for key in ("action", "covered", "fee_vnd", "due_at")},
        "opened_at": incident.opened_at,
    }


async def notify_incident(conn: AsyncConnection, incident_id: int, kind: str, now: dt.datetime,
                          customer_calendar: BusinessCalendar | None = None,
                          visit_id: int | None = None, urgent_from: str = "critical") -> None:
    """An incident event (opened, escalated, updated, overdue) and, with `visit_id`, the visit
    it created: customers who opted in hear of the visit; staff get one message.
    `urgent_from`: the machine's `notify.urgent_from` (IncidentDesk.urgent_from)."""
    facts = await incident_facts(conn, incident_id)
    incident = await service.get_incident(conn, incident_id)
    open_now = customer_calendar is None or policy.is_open(customer_calendar, now)
    suffix = {"incident.updated": f":{now.isoformat()}",
              "incident.escalated": f":{now.isoformat()}",
              "incident.overdue": f":{facts['due_at']}"}.get(kind, "")
    await notify(conn, policy.Event(
        kind, f"incident:{incident_id}:{kind.split('.')[1]}{suffix}", incident.severity, facts,
        customer_id=incident.customer_id, thread=f"incident:{incident_id}",
        incident_kind=incident.kind, urgent_from=urgent_from), now, customer_open=open_now)
    if visit_id is not None:
        await notify(conn, policy.Event(
            "visit.created", f"visit:{visit_id}:created", incident.severity,
            {**facts, "visit": visit_id}, customer_id=incident.customer_id,
            thread=f"incident:{incident_id}", incident_kind=incident.kind,
            urgent_from=urgent_from), now)


async def notify_job_result(conn: AsyncConnection, part: JobPart, outcome: str,
                            reason: str | None, now: dt.datetime) -> None:
    """An update job's result on one machine: installed (customers may hear) or failed."""
    if outcome not in ("installed", "failed", "rolled_back", "refused"):
        return
    agent = await fstore.get_agent(conn, part.agent_id)
    kind = "update.installed" if outcome == "installed" else "job.failed"
    await notify(conn, policy.Event(
        kind, f"job:{part.ref}:{outcome}", "low" if outcome == "installed" else "high",
        {"machine": agent.id, "hostname": agent.hostname, "customer": agent.customer,
         "product": part.product, "version": part.version, "outcome": outcome,
         "reason": reason or "", "job": part.ref},
        customer_id=agent.customer_id), now)


async def notify_rollout(conn: AsyncConnection, kind: str, rollout: Rollout,
                         machines: list[RolloutMachine], reason: str, now: dt.datetime) -> None:
    """A rollout paused or at risk of missing its regulation deadline: one message naming
    how many machines, not one per machine."""
    if not machines:
        return
    hostnames = [machine.presence.hostname for machine in machines[:20]]
    await notify(conn, policy.Event(
        kind, f"rollout:{rollout.id}:{kind.split('.')[1]}:{now.isoformat()}", "high",
        {"rollout": rollout.id, "product": rollout.product, "version": rollout.version,
         "effective": rollout.effective, "count": len(machines), "reason": reason,
         "hostnames": hostnames}, customer_id=rollout.customer_id,
        thread=f"rollout:{rollout.id}:{kind}"), now)
