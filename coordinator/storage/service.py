"""Queries for the service side: contracts, maintenance, incidents, decisions, visits,
diagnostics and the flap-suppression state of trouble conditions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.policy.entitlement import Contract, MaintenancePackage
from careline.coordinator.storage.fleet import (
    Row,
    beyond_newest,
    insert_row,
    rows_of,
    typed_first,
    typed_one,
    typed_rows,
)
from careline.coordinator.storage.schema import (
    agents,
    conditions,
    contracts,
    customer_closures,
    customers,
    decisions,
    diagnostics,
    incident_waits,
    incidents,
    maintenance_packages,
    policy_overrides,
    visits,
)
from careline.shared.errors import Conflict


@dataclass(frozen=True, slots=True)
class ContractRow:
    """A contract as stored (the entitlement policy's `Contract` is the part it reasons on):
    `machines` is how many seats it sells, None for no limit."""

    id: int
    customer_id: int
    signed_on: dt.date
    warranty_months: int
    machines: int | None
    created_at: dt.datetime

    @property
    def terms(self) -> Contract:
        """What the entitlement calculation reasons on."""
        return Contract(self.id, self.signed_on, self.warranty_months)


@dataclass(frozen=True, slots=True)
class Closure:
    """Days a customer's office is closed (Tết, a move): no business time runs on them."""

    id: int
    customer_id: int
    first_day: dt.date
    last_day: dt.date
    note: str
    created_by: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Incident:
    """An incident, with its customer's name and its machine's hostname."""

    id: int
    agent_id: str
    customer_id: int
    kind: str
    subject: str
    category: str
    severity: str
    status: str  # open, resolved
    opened_by: str  # "agent", or the technician who reported it
    opened_at: dt.datetime
    updated_at: dt.datetime
    resolved_at: dt.datetime | None
    signals: int  # how many times it was seen (flap suppression bumps instead of reopening)
    touched: bool
    detail: str
    resolution: str | None
    waiting_on: str | None  # what its due clock waits for (customer, parts, ...), if anything
    customer: str
    hostname: str


@dataclass(frozen=True, slots=True)
class IncidentWait:
    """A time an incident's due clock was paused, waiting on someone; open while `ended_at`
    is None."""

    id: int
    incident_id: int
    on_whom: str  # customer, vendor, third_party
    note: str
    started_at: dt.datetime
    started_by: str
    ended_at: dt.datetime | None
    ended_by: str | None


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """A stored decision (the policy's `Decision` as it was made, with the facts it saw)."""

    id: int
    incident_id: int
    decided_at: dt.datetime
    action: str
    covered: bool
    billable: bool
    fee_vnd: int
    quote_vnd: int
    due_at: dt.datetime
    rule: int
    reasons: list[str]  # English, as `incidents explain` prints
    explanation: list[dict[str, Any]] | None  # policy reasons as data; None before i15d
    facts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Visit:
    """A work order for a technician on site, with its customer's name."""

    id: int
    incident_id: int
    agent_id: str
    customer_id: int
    action: str
    fee_vnd: int
    due_at: dt.datetime
    technician: str | None
    status: str  # open, assigned, completed
    created_at: dt.datetime
    completed_at: dt.datetime | None
    note: str | None
    customer: str
    hostname: str


# ----------------------------------------------------------------------------- contracts
async def add_contract(
    conn: AsyncConnection, *, customer_id: int, signed_on: dt.date, warranty_months: int,
    machines: int | None, now: dt.datetime,
) -> int:
    return await insert_row(conn, contracts, {
        "customer_id": customer_id, "signed_on": signed_on, "warranty_months": warranty_months,
        "machines": machines, "created_at": now,
    }, "contract")


async def get_contract(conn: AsyncConnection, contract_id: int) -> ContractRow:
    return await typed_one(conn, sa.select(contracts).where(contracts.c.id == contract_id),
                           ContractRow, f"no contract {contract_id}")


async def list_contracts(conn: AsyncConnection,
                         customer_id: int | None = None) -> list[ContractRow]:
    query = sa.select(contracts).order_by(contracts.c.id)
    if customer_id is not None:
        query = query.where(contracts.c.customer_id == customer_id)
    return typed_rows(await conn.execute(query), ContractRow)


def pick_current_contract(customer_contracts: list[ContractRow],
                          on: dt.date) -> ContractRow | None:
    """The contract a customer's machines join by default: the latest one signed by `on`,
    else the earliest one signed later."""
    signed = [c for c in customer_contracts if c.signed_on <= on]
    if signed:
        return max(signed, key=lambda c: (c.signed_on, c.id))
    return min(customer_contracts, key=lambda c: (c.signed_on, c.id), default=None)


async def current_contract(conn: AsyncConnection, customer_id: int,
                           on: dt.date) -> ContractRow | None:
    return pick_current_contract(await list_contracts(conn, customer_id), on)


async def contracts_of(conn: AsyncConnection, customer_ids: list[int]) -> list[ContractRow]:
    """Every contract of these customers, in one query."""
    if not customer_ids:
        return []
    return typed_rows(await conn.execute(
        sa.select(contracts).where(contracts.c.customer_id.in_(customer_ids))), ContractRow)


async def maintenance_of(conn: AsyncConnection,
                         contract_ids: list[int]) -> list[MaintenancePackage]:
    """Every maintenance package of these contracts, in one query, by start date."""
    if not contract_ids:
        return []
    return typed_rows(await conn.execute(
        sa.select(*(maintenance_packages.c[f.name] for f in fields(MaintenancePackage)))
        .where(maintenance_packages.c.contract_id.in_(contract_ids))
        .order_by(maintenance_packages.c.start)), MaintenancePackage)


async def add_maintenance(
    conn: AsyncConnection, *, contract_id: int, start: dt.date, end: dt.date, tier: str,
    now: dt.datetime,
) -> int:
    return await insert_row(conn, maintenance_packages, {
        "contract_id": contract_id, "start": start, "end": end, "tier": tier, "created_at": now,
    }, "maintenance package")


async def list_maintenance(conn: AsyncConnection, contract_id: int) -> list[MaintenancePackage]:
    return await maintenance_of(conn, [contract_id])


async def contract_machines(conn: AsyncConnection, contract_id: int) -> list[Row]:
    query = sa.select(agents.c.id, agents.c.hostname, agents.c.joined_contract_on).where(
        agents.c.contract_id == contract_id)
    return rows_of(await conn.execute(query))


# ----------------------------------------------------------------------------- closures
async def add_closure(
    conn: AsyncConnection, *, customer_id: int, first_day: dt.date, last_day: dt.date,
    note: str, created_by: str, now: dt.datetime,
) -> int:
    return await insert_row(conn, customer_closures, {
        "customer_id": customer_id, "first_day": first_day, "last_day": last_day, "note": note,
        "created_by": created_by, "created_at": now,
    }, "closure")


async def list_closures(conn: AsyncConnection, customer_id: int | None = None) -> list[Closure]:
    query = sa.select(customer_closures).order_by(customer_closures.c.first_day)
    if customer_id is not None:
        query = query.where(customer_closures.c.customer_id == customer_id)
    return typed_rows(await conn.execute(query), Closure)


async def closures_by_customer(
    conn: AsyncConnection,
) -> dict[int, tuple[tuple[dt.date, dt.date], ...]]:
    """Every customer's closures as (first, last) days: what their calendars need."""
    found: dict[int, list[tuple[dt.date, dt.date]]] = {}
    for row in await list_closures(conn):
        found.setdefault(row.customer_id, []).append((row.first_day, row.last_day))
    return {customer: tuple(days) for customer, days in found.items()}


# ----------------------------------------------------------------------------- overrides
async def set_override(
    conn: AsyncConnection, *, target: str, key: str, value: Any, by: str, now: dt.datetime,
) -> None:
    """Set (or replace) one policy value for a customer, site or machine."""
    await conn.execute(policy_overrides.delete().where(
        policy_overrides.c.target == target, policy_overrides.c.key == key))
    await conn.execute(policy_overrides.insert().values(
        target=target, key=key, value=value, set_by=by, set_at=now))


async def unset_override(conn: AsyncConnection, target: str, key: str) -> bool:
    result = await conn.execute(policy_overrides.delete().where(
        policy_overrides.c.target == target, policy_overrides.c.key == key))
    return bool(result.rowcount)


@dataclass(frozen=True, slots=True)
class AgentOwner:
    """Whose overrides apply to an agent: its customer's and its site's."""

    id: str
    customer_id: int
    site_id: int | None


async def agent_owners(conn: AsyncConnection, agent_ids: list[str]) -> list[AgentOwner]:
    if not agent_ids:
        return []
    return typed_rows(await conn.execute(
        sa.select(agents.c.id, agents.c.customer_id, agents.c.site_id)
        .where(agents.c.id.in_(agent_ids))), AgentOwner)


async def overrides_by_target(conn: AsyncConnection) -> dict[str, dict[str, Any]]:
    """Every override, target -> key -> value (a small table, read whole)."""
    found: dict[str, dict[str, Any]] = {}
    query = (sa.select(policy_overrides.c.target, policy_overrides.c.key, policy_overrides.c.value)
             .order_by(policy_overrides.c.target, policy_overrides.c.key))
    for target, key, value in await conn.execute(query):
        found.setdefault(target, {})[key] = value
    return found


# ----------------------------------------------------------------------------- conditions
@dataclass(frozen=True, slots=True)
class Condition:
    """A condition an agent reports (a problem of one kind on one subject) going through
    flap suppression: its state as JSON, and the incident it opened, if any."""

    agent_id: str
    kind: str
    subject: str
    state: dict[str, Any]
    incident_id: int | None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.agent_id, self.kind, self.subject


async def conditions_for(conn: AsyncConnection, agent_ids: list[str]) -> list[Condition]:
    if not agent_ids:
        return []
    return typed_rows(await conn.execute(
        sa.select(conditions).where(conditions.c.agent_id.in_(agent_ids))), Condition)


async def save_condition(
    conn: AsyncConnection, key: tuple[str, str, str], state: dict[str, Any] | None,
    incident_id: int | None, exists: bool,
) -> None:
    agent_id, kind, subject = key
    where = sa.and_(conditions.c.agent_id == agent_id, conditions.c.kind == kind,
                    conditions.c.subject == subject)
    if state is None:
        if exists:
            await conn.execute(conditions.delete().where(where))
    elif exists:
        await conn.execute(conditions.update().where(where).values(
            state=state, incident_id=incident_id))
    else:
        await conn.execute(conditions.insert().values(
            agent_id=agent_id, kind=kind, subject=subject, state=state, incident_id=incident_id))


async def forget_conditions_of(conn: AsyncConnection, incident_id: int) -> None:
    await conn.execute(conditions.delete().where(conditions.c.incident_id == incident_id))


async def touch_conditions_of(conn: AsyncConnection, incident_id: int) -> list[Condition]:
    return typed_rows(await conn.execute(
        sa.select(conditions).where(conditions.c.incident_id == incident_id)), Condition)


# ----------------------------------------------------------------------------- incidents
async def add_incident(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return await insert_row(conn, incidents, values, "incident")


def incident_query() -> sa.Select[Any]:
    """Incidents with their customer's name and machine's hostname (as `Incident`)."""
    return sa.select(incidents, customers.c.name.label("customer"), agents.c.hostname).select_from(
        incidents.join(customers, incidents.c.customer_id == customers.c.id)
        .join(agents, incidents.c.agent_id == agents.c.id))


async def get_incident(conn: AsyncConnection, incident_id: int) -> Incident:
    return await typed_one(conn, incident_query().where(incidents.c.id == incident_id), Incident,
                           f"no incident {incident_id}")


async def count_open_incidents(conn: AsyncConnection, agent_id: str, kind: str) -> int:
    query = sa.select(sa.func.count()).select_from(incidents).where(
        incidents.c.agent_id == agent_id, incidents.c.kind == kind, incidents.c.status == "open")
    return int((await conn.execute(query)).scalar_one())


async def list_incidents(
    conn: AsyncConnection, *, open_only: bool = False, customer_id: int | None = None,
    agent_id: str | None = None,
) -> list[Incident]:
    query = incident_query().order_by(incidents.c.id.desc())
    if open_only:
        query = query.where(incidents.c.status == "open")
    if customer_id is not None:
        query = query.where(incidents.c.customer_id == customer_id)
    if agent_id is not None:
        query = query.where(incidents.c.agent_id == agent_id)
    return typed_rows(await conn.execute(query), Incident)


async def update_incident(conn: AsyncConnection, incident_id: int, **values: Any) -> None:
    await conn.execute(incidents.update().where(incidents.c.id == incident_id).values(**values))


async def bump_incident(conn: AsyncConnection, incident_id: int, detail: str, now: dt.datetime) -> None:
    await conn.execute(incidents.update().where(incidents.c.id == incident_id).values(
        signals=incidents.c.signals + 1, updated_at=now, detail=detail))


async def resolve_incident(
    conn: AsyncConnection, incident_id: int, resolution: str, now: dt.datetime
) -> None:
    result = await conn.execute(
        incidents.update().where(incidents.c.id == incident_id, incidents.c.status == "open")
        .values(status="resolved", resolved_at=now, updated_at=now, resolution=resolution))
    if result.rowcount == 0:
        raise Conflict(f"incident {incident_id} is not open")


# ----------------------------------------------------------------------------- waits
async def start_wait(
    conn: AsyncConnection, *, incident_id: int, on_whom: str, note: str, by: str,
    now: dt.datetime,
) -> int:
    wait_id = await insert_row(conn, incident_waits, {
        "incident_id": incident_id, "on_whom": on_whom, "note": note, "started_at": now,
        "started_by": by,
    }, "wait")
    await update_incident(conn, incident_id, waiting_on=on_whom, updated_at=now)
    return wait_id


async def end_wait(conn: AsyncConnection, incident_id: int, by: str, now: dt.datetime) -> None:
    result = await conn.execute(
        incident_waits.update()
        .where(incident_waits.c.incident_id == incident_id, incident_waits.c.ended_at.is_(None))
        .values(ended_at=now, ended_by=by))
    if result.rowcount == 0:
        raise Conflict(f"incident {incident_id} is not waiting on anyone")
    await update_incident(conn, incident_id, waiting_on=None, updated_at=now)


async def list_waits(conn: AsyncConnection, incident_id: int) -> list[IncidentWait]:
    return typed_rows(await conn.execute(
        sa.select(incident_waits).where(incident_waits.c.incident_id == incident_id)
        .order_by(incident_waits.c.started_at)), IncidentWait)


# ----------------------------------------------------------------------------- decisions
async def add_decision(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return await insert_row(conn, decisions, values, "decision")


async def latest_decision(conn: AsyncConnection, incident_id: int) -> DecisionRow | None:
    return await typed_first(conn, sa.select(decisions).where(decisions.c.incident_id == incident_id)
                             .order_by(decisions.c.id.desc()).limit(1), DecisionRow)


# ----------------------------------------------------------------------------- visits
async def add_visit(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return await insert_row(conn, visits, values, "visit")


def visits_query() -> sa.Select[Any]:
    """Visits with their customer's name and machine's hostname (as `Visit`)."""
    return (sa.select(visits, customers.c.name.label("customer"), agents.c.hostname)
            .select_from(visits.join(customers, visits.c.customer_id == customers.c.id)
                         .join(agents, visits.c.agent_id == agents.c.id)))


async def get_visit(conn: AsyncConnection, visit_id: int) -> Visit:
    return await typed_one(conn, visits_query().where(visits.c.id == visit_id), Visit,
                           f"no visit {visit_id}")


async def list_visits(conn: AsyncConnection, due_before: dt.datetime | None = None,
                      open_only: bool = True, customer_id: int | None = None) -> list[Visit]:
    query = visits_query().order_by(visits.c.due_at)
    if open_only:
        query = query.where(visits.c.status != "completed")
    if due_before is not None:
        query = query.where(visits.c.due_at <= due_before)
    if customer_id is not None:  # ix_visits_customer
        query = query.where(visits.c.customer_id == customer_id)
    return typed_rows(await conn.execute(query), Visit)


async def open_visit_of(conn: AsyncConnection, incident_id: int) -> Visit | None:
    """The incident's visit not yet completed, if any (a new decision updates it)."""
    return await typed_first(conn, visits_query().where(
        visits.c.incident_id == incident_id, visits.c.status != "completed",
    ).order_by(visits.c.id.desc()).limit(1), Visit)


async def complete_reinstall_visits(
    conn: AsyncConnection, agent_id: str, note: str, now: dt.datetime
) -> list[int]:
    """The machine was reinstalled and is back: its open on-site reinstalls are done."""
    open_visits = (visits.c.agent_id == agent_id, visits.c.status != "completed",
                   visits.c.action == "onsite_reinstall")
    ids = [row.id for row in await conn.execute(sa.select(visits.c.id).where(*open_visits))]
    if ids:
        await conn.execute(visits.update().where(visits.c.id.in_(ids)).values(
            status="completed", completed_at=now, note=note))
    return ids


async def update_visit(conn: AsyncConnection, visit_id: int, **values: Any) -> None:
    await conn.execute(visits.update().where(visits.c.id == visit_id).values(**values))


async def count_visits(conn: AsyncConnection, customer_id: int, since: dt.datetime) -> int:
    """On-site visits a customer has used since a date (for the yearly quota)."""
    query = sa.select(sa.func.count()).select_from(visits).where(
        visits.c.customer_id == customer_id, visits.c.created_at >= since,
        visits.c.action == "technician_visit")
    return int((await conn.execute(query)).scalar_one())


# ----------------------------------------------------------------------------- diagnostics
async def add_diagnostics(
    conn: AsyncConnection, *, agent_id: str, incident_id: int | None, requested_by: str,
    size: int, bundle: dict[str, Any], now: dt.datetime,
) -> int:
    return await insert_row(conn, diagnostics, {
        "agent_id": agent_id, "incident_id": incident_id, "requested_by": requested_by,
        "created_at": now, "size": size, "bundle": bundle,
    }, "diagnostics")


async def prune_diagnostics(conn: AsyncConnection, keep_per_agent: int) -> int:
    """Each agent's newest `keep_per_agent` bundles are kept; returns how many were deleted."""
    result = await conn.execute(diagnostics.delete().where(
        diagnostics.c.id.in_(beyond_newest(diagnostics, keep_per_agent))))
    return int(result.rowcount or 0)


@dataclass(frozen=True, slots=True)
class DiagnosticsEntry:
    """A diagnostics bundle collected from a machine, without the bundle (a listing)."""

    id: int
    agent_id: str
    incident_id: int | None
    requested_by: str
    created_at: dt.datetime
    size: int  # bytes of the bundle as the agent sent it


@dataclass(frozen=True, slots=True)
class Diagnostics(DiagnosticsEntry):
    bundle: dict[str, Any]  # what the agent answered to Diagnose (logs, versions, health)


async def list_diagnostics(conn: AsyncConnection, agent_id: str) -> list[DiagnosticsEntry]:
    query = (sa.select(diagnostics.c.id, diagnostics.c.agent_id, diagnostics.c.incident_id,
                       diagnostics.c.requested_by, diagnostics.c.created_at, diagnostics.c.size)
             .where(diagnostics.c.agent_id == agent_id).order_by(diagnostics.c.id.desc()))
    return typed_rows(await conn.execute(query), DiagnosticsEntry)


async def get_diagnostics(conn: AsyncConnection, diag_id: int) -> Diagnostics:
    return await typed_one(conn, sa.select(diagnostics).where(diagnostics.c.id == diag_id),
                           Diagnostics, f"no diagnostics {diag_id}")
