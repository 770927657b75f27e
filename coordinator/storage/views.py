"""Read-only aggregate queries for screens and reports: one indexed query per page, not one per row."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.storage.fleet import rows_of, typed_rows
from careline.coordinator.storage.schema import (
    agents,
    customers,
    decisions,
    incidents,
    job_machines,
    jobs,
    releases,
    rollout_machines,
    rollouts,
    visits,
)
from careline.coordinator.storage.service import Incident, Visit, incident_query, visits_query


@dataclass(frozen=True, slots=True)
class CustomerOverview:
    """One customer's machines by presence, and how many need attention."""

    id: int
    name: str
    timezone: str
    machines: int
    online: int
    off: int  # shut down cleanly
    offline: int
    needs_attention: int  # machines with an open incident
    open_incidents: int


async def fleet_overview(conn: AsyncConnection, online_since: dt.datetime) -> list[CustomerOverview]:
    """Per customer: machines online, off (shut down cleanly), offline, and needing attention
    (an open incident); the same rules as fleet.AgentPresence.status, counted in the database."""
    live = agents.c.revoked_at.is_(None)
    online = sa.and_(live, agents.c.connected.is_(True), agents.c.last_seen >= online_since)
    off = sa.and_(live, agents.c.connected.is_(False), agents.c.off_at.is_not(None),
                  sa.or_(agents.c.last_connected_at.is_(None),
                         agents.c.off_at >= agents.c.last_connected_at))
    attention = (
        sa.select(incidents.c.customer_id,
                  sa.func.count(sa.distinct(incidents.c.agent_id)).label("needs_attention"),
                  sa.func.count().label("open_incidents"))
        .where(incidents.c.status == "open").group_by(incidents.c.customer_id).subquery()
    )
    counts = (
        sa.select(agents.c.customer_id,
                  sa.func.sum(sa.case((live, 1), else_=0)).label("machines"),
                  sa.func.sum(sa.case((online, 1), else_=0)).label("online"),
                  sa.func.sum(sa.case((off, 1), else_=0)).label("off"))
        .group_by(agents.c.customer_id).subquery()
    )
    query = (
        sa.select(customers.c.id, customers.c.name, customers.c.timezone,
                  counts.c.machines, counts.c.online, counts.c.off, attention.c.needs_attention,
                  attention.c.open_incidents)
        .select_from(customers.outerjoin(counts, counts.c.customer_id == customers.c.id)
                     .outerjoin(attention, attention.c.customer_id == customers.c.id))
        .order_by(customers.c.name)
    )
    overview = []
    for row in rows_of(await conn.execute(query)):
        for key in ("machines", "online", "off", "needs_attention", "open_incidents"):
            row[key] = int(row[key] or 0)  # NULL for a customer with no machines
        overview.append(CustomerOverview(
            **row, offline=row["machines"] - row["online"] - row["off"]))
    return overview


@dataclass(frozen=True, slots=True)
class IncidentLine(Incident):
    """An incident with its latest decision's terms (each None before the first)."""

    action: str | None
    covered: bool | None
    fee_vnd: int | None
    due_at: dt.datetime | None


async def incidents_page(
    conn: AsyncConnection, *, open_only: bool, customer_id: int | None, agent_id: str | None,
    limit: int, offset: int,
) -> tuple[int, list[IncidentLine]]:
    """Incidents, open ones first then newest, with their latest decision; and how many match."""
    where = []
    if open_only:
        where.append(incidents.c.status == "open")
    if customer_id is not None:
        where.append(incidents.c.customer_id == customer_id)
    if agent_id is not None:
        where.append(incidents.c.agent_id == agent_id)
    total = (await conn.execute(sa.select(sa.func.count()).select_from(incidents).where(*where))).scalar_one()
    query = (
        incident_query().where(*where)
        .order_by(sa.case((incidents.c.status == "open", 0), else_=1), incidents.c.id.desc())
        .limit(limit).offset(offset)
    )
    return int(total), await _with_decisions(conn, query)


_NO_DECISION: dict[str, Any] = {"action": None, "covered": None, "fee_vnd": None, "due_at": None}


async def _with_decisions(conn: AsyncConnection, query: sa.Select[Any]) -> list[IncidentLine]:
    """The incidents `query` (an incident_query) selects, each with its latest decision
    (action, covered, fee, due time): one query for the rows shown, not a scan of every
    decision ever made."""
    found = rows_of(await conn.execute(query))
    ids = [incident["id"] for incident in found]
    latest = (sa.select(sa.func.max(decisions.c.id)).where(decisions.c.incident_id.in_(ids))
              .group_by(decisions.c.incident_id))
    terms = {d.pop("incident_id"): d for d in rows_of(await conn.execute(
        sa.select(decisions.c.incident_id, decisions.c.action, decisions.c.covered,
                  decisions.c.fee_vnd, decisions.c.due_at).where(decisions.c.id.in_(latest))))} if ids else {}
    return [IncidentLine(**incident, **terms.get(incident["id"], _NO_DECISION))
            for incident in found]


async def incidents_between(conn: AsyncConnection, customer_id: int, start: dt.datetime,
                            end: dt.datetime) -> list[IncidentLine]:
    """A customer's incidents opened in [start, end), with their latest decision."""
    query = (
        incident_query()
        .where(incidents.c.customer_id == customer_id, incidents.c.opened_at >= start,
               incidents.c.opened_at < end)
        .order_by(incidents.c.opened_at)
    )
    return await _with_decisions(conn, query)


@dataclass(frozen=True, slots=True)
class MachineJob:
    """A machine's part of a job, as its page lists it."""

    job_id: int
    kind: str
    product: str | None
    version: str | None
    status: str
    detail: str | None
    created_by: str
    created_at: dt.datetime
    finished_at: dt.datetime | None


async def machine_jobs(conn: AsyncConnection, agent_id: str, limit: int) -> list[MachineJob]:
    """A machine's update, reinstall and verify jobs, newest first, with its part's state."""
    query = (
        sa.select(job_machines.c.job_id, jobs.c.kind, job_machines.c.product, job_machines.c.version,
                  job_machines.c.status, job_machines.c.detail, jobs.c.created_by,
                  job_machines.c.created_at, job_machines.c.finished_at)
        .join(jobs, jobs.c.id == job_machines.c.job_id)
        .where(job_machines.c.agent_id == agent_id)
        .order_by(job_machines.c.id.desc()).limit(limit)
    )
    return typed_rows(await conn.execute(query), MachineJob)


@dataclass(frozen=True, slots=True)
class CustomerRollout:
    """A rollout as one customer saw it: its machines there and how they fared."""

    id: int
    product: str
    version: str
    kind: str
    status: str
    effective: dt.date | None
    machines: int  # covered ones (a machine listed as not covered is not counted)
    succeeded: int
    failed: int


async def customer_rollouts(conn: AsyncConnection, customer_id: int) -> list[CustomerRollout]:
    """Rollouts that reached any of a customer's machines, with that customer's counts
    (machines: those covered for it; a machine listed as not covered is not counted)."""
    machines = rollout_machines
    query = (
        sa.select(rollouts.c.id, rollouts.c.product, rollouts.c.version, rollouts.c.kind,
                  rollouts.c.status, rollouts.c.effective,
                  sa.func.sum(sa.case((machines.c.state != "not_covered", 1), else_=0)).label("machines"),
                  sa.func.sum(sa.case((machines.c.state == "succeeded", 1), else_=0)).label("succeeded"),
                  sa.func.sum(sa.case((machines.c.state.in_(("failed", "timed_out")), 1), else_=0))
                  .label("failed"))
        .join(rollouts, rollouts.c.id == machines.c.rollout_id)
        .where(machines.c.customer_id == customer_id)
        .group_by(rollouts.c.id, rollouts.c.product, rollouts.c.version, rollouts.c.kind,
                  rollouts.c.status, rollouts.c.effective)
        .order_by(rollouts.c.id.desc())
    )
    found = []
    for row in rows_of(await conn.execute(query)):
        for key in ("machines", "succeeded", "failed"):
            row[key] = int(row[key] or 0)  # SUM of no rows is NULL
        found.append(CustomerRollout(**row))
    return found


async def visits_between(conn: AsyncConnection, customer_id: int, start: dt.datetime,
                         end: dt.datetime) -> list[Visit]:
    """A customer's visits created or completed in [start, end)."""
    in_period = sa.or_(sa.and_(visits.c.created_at >= start, visits.c.created_at < end),
                       sa.and_(visits.c.completed_at >= start, visits.c.completed_at < end))
    query = (visits_query().where(visits.c.customer_id == customer_id, in_period)
             .order_by(visits.c.due_at))
    return typed_rows(await conn.execute(query), Visit)


@dataclass(frozen=True, slots=True)
class InstalledUpdate:
    """A release installed on a customer's machines in a period."""

    product: str
    version: str
    kind: str | None  # None: no release of that version is published (any more)
    regulation_ref: str | None
    effective: dt.date | None
    machines: int
    first: dt.datetime
    last: dt.datetime


async def installed_updates(conn: AsyncConnection, customer_id: int, start: dt.datetime,
                            end: dt.datetime) -> list[InstalledUpdate]:
    """Releases installed on a customer's machines in [start, end): one row per release."""
    query = (
        sa.select(job_machines.c.product, job_machines.c.version, releases.c.kind,
                  releases.c.regulation_ref, releases.c.effective,
                  sa.func.count(sa.distinct(job_machines.c.agent_id)).label("machines"),
                  sa.func.min(job_machines.c.finished_at).label("first"),
                  sa.func.max(job_machines.c.finished_at).label("last"))
        .select_from(
            job_machines.join(agents, agents.c.id == job_machines.c.agent_id)
            .join(jobs, jobs.c.id == job_machines.c.job_id)
            .outerjoin(releases, sa.and_(releases.c.product == job_machines.c.product,
                                         releases.c.version == job_machines.c.version)))
        .where(agents.c.customer_id == customer_id, job_machines.c.status == "installed",
               job_machines.c.finished_at >= start, job_machines.c.finished_at < end)
        .group_by(job_machines.c.product, job_machines.c.version, releases.c.kind,
                  releases.c.regulation_ref, releases.c.effective)
        .order_by(sa.func.min(job_machines.c.finished_at))
    )
    return typed_rows(await conn.execute(query), InstalledUpdate)
