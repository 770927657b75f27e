"""Service methods: contracts and maintenance, entitlement, incidents, visits, reports."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Literal

import msgspec

from careline.coordinator.api import Context, method
from careline.coordinator.incidents import ONSITE_ACTIONS, customer_calendar
from careline.coordinator.notify.events import notify_incident
from careline.coordinator.policy.config import WEEKDAYS
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import rollouts as rstore
from careline.coordinator.storage import service
from careline.shared.errors import ConfigError, Conflict

Category = Literal["virus", "power", "disk", "bug", "regulation", "config", "other"]
Severity = Literal["low", "medium", "high", "critical"]


# ----------------------------------------------------------------------------- customers
class CustomerHours(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    workdays: str | None = None  # "mon,tue,wed,thu,fri,sat"
    opens: str | None = None  # "08:00"
    closes: str | None = None


@method("customers.hours", "technician", CustomerHours)
async def set_customer_hours(ctx: Context, p: CustomerHours) -> store.Customer:
    values: dict[str, Any] = {}
    if p.workdays is not None:
        days = [d.strip().lower() for d in p.workdays.split(",") if d.strip()]
        if not days or any(d not in WEEKDAYS for d in days):
            raise ConfigError(f"workdays must be a comma list of {', '.join(WEEKDAYS)}")
        values["workdays"] = ",".join(days)
    for key in ("opens", "closes"):
        text = getattr(p, key)
        if text is not None:
            try:
                values[key] = dt.time.fromisoformat(text).strftime("%H:%M")
            except ValueError:
                raise ConfigError(f"--{key} must be HH:MM, got {text!r}") from None
    async with ctx.services.db.transaction() as conn:
        customer = await store.get_customer(conn, p.customer)
        await store.update_customer(conn, customer.id, **values)
        await ctx.audit(conn, "customer.hours", f"customer:{customer.id}", **values)
        return await store.get_customer(conn, customer.id)


class CustomerClosed(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    first_day: dt.date | None = None  # None: only list the closures
    last_day: dt.date | None = None
    note: str = ""


@method("customers.closed", "technician", CustomerClosed)
async def customer_closed(ctx: Context, p: CustomerClosed) -> list[service.Closure]:
    """Record days a customer is closed (their own holidays): not business time, so no
    offline incidents and no due times fall in them. Returns all their closures."""
    if (p.first_day is None) != (p.last_day is None):
        raise ConfigError("give both --from and --to")
    if p.first_day and p.last_day and p.last_day < p.first_day:
        raise ConfigError("--to must not be before --from")
    async with ctx.services.db.transaction() as conn:
        customer = await store.get_customer(conn, p.customer)
        if p.first_day and p.last_day:
            closure = await service.add_closure(
                conn, customer_id=customer.id, first_day=p.first_day, last_day=p.last_day,
                note=p.note, created_by=ctx.caller.name, now=ctx.now)
            await ctx.audit(conn, "customer.closed", f"customer:{customer.id}",
                            closure=closure, first_day=p.first_day, last_day=p.last_day,
                            note=p.note)
        return await service.list_closures(conn, customer.id)


# ----------------------------------------------------------------------------- contracts
class AddContract(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    signed: dt.date
    warranty_months: int = 12
    machines: int | None = None


@method("contracts.add", "technician", AddContract)
async def add_contract(ctx: Context, p: AddContract) -> service.ContractRow:
    if not 0 <= p.warranty_months <= 120:
        raise ConfigError("--warranty-months must be between 0 and 120")
    if p.machines is not None and p.machines < 1:
        raise ConfigError("--machines must be at least 1")
    async with ctx.services.db.transaction() as conn:
        customer = await store.get_customer(conn, p.customer)
        contract_id = await service.add_contract(
            conn, customer_id=customer.id, signed_on=p.signed,
            warranty_months=p.warranty_months, machines=p.machines, now=ctx.now)
        await ctx.audit(conn, "contract.add", f"contract:{contract_id}",
                        customer=customer.id, signed=p.signed, months=p.warranty_months)
        await rstore.mark_targeting_changed(conn, ctx.now, customer_id=customer.id)
        return await service.get_contract(conn, contract_id)


class ListContracts(msgspec.Struct, forbid_unknown_fields=True):
    customer: str | None = None


@method("contracts.list", "viewer", ListContracts)
async def list_contracts(ctx: Context, p: ListContracts) -> list[service.ContractRow]:
    async with ctx.services.db.connect() as conn:
        customer_id = await store.customer_id_of(conn, p.customer)
        return await service.list_contracts(conn, customer_id)


class ContractRef(msgspec.Struct, forbid_unknown_fields=True):
    id: int


@method("contracts.show", "viewer", ContractRef)
async def show_contract(ctx: Context, p: ContractRef) -> dict[str, Any]:
    async with ctx.services.db.connect() as conn:
        return {**dataclasses.asdict(await service.get_contract(conn, p.id)),
                "maintenance": await service.list_maintenance(conn, p.id),
                "machines_joined": await service.contract_machines(conn, p.id)}


class AddMaintenance(msgspec.Struct, forbid_unknown_fields=True):
    contract: int
    start: dt.date
    end: dt.date
    tier: str


@method("maintenance.add", "technician", AddMaintenance)
async def add_maintenance(ctx: Context, p: AddMaintenance) -> dict[str, Any]:
    ctx.services.desk.policy.tier(p.tier)  # unknown tiers are refused with the known ones
    if p.end < p.start:
        raise ConfigError("--end must not be before --start")
    async with ctx.services.db.transaction() as conn:
        contract = await service.get_contract(conn, p.contract)
        package_id = await service.add_maintenance(
            conn, contract_id=p.contract, start=p.start, end=p.end, tier=p.tier, now=ctx.now)
        await ctx.audit(conn, "maintenance.add", f"contract:{p.contract}", package=package_id,
                        start=p.start, end=p.end, tier=p.tier)
        await rstore.mark_targeting_changed(conn, ctx.now, customer_id=contract.customer_id)
    return {"id": package_id, "contract_id": p.contract, "start": p.start, "end": p.end,
            "tier": p.tier}


# ----------------------------------------------------------------------------- entitlement
class EntitlementParams(msgspec.Struct, forbid_unknown_fields=True):
    machine: str
    at: dt.date | None = None


@method("entitlement.show", "viewer", EntitlementParams)
async def show_entitlement(ctx: Context, p: EntitlementParams) -> dict[str, Any]:
    async with ctx.services.db.connect() as conn:
        agent = await store.get_agent(conn, p.machine)
        entitlement = await ctx.services.desk.entitlement(conn, agent, p.at, ctx.now)
    return {"machine": agent.id, "hostname": agent.hostname, "customer": agent.customer,
            **entitlement.to_dict()}


class ExpiringParams(msgspec.Struct, forbid_unknown_fields=True):
    within_days: int = 30


@method("report.expiring", "viewer", ExpiringParams)
async def report_expiring(ctx: Context, p: ExpiringParams) -> list[dict[str, Any]]:
    """Machines whose coverage ends soon with nothing booked after: renewal offers."""
    async with ctx.services.db.connect() as conn:
        return await ctx.services.desk.expiring_machines(conn, p.within_days, ctx.now)


@method("report.expiring_contracts", "viewer", ExpiringParams)
async def report_expiring_contracts(ctx: Context, p: ExpiringParams) -> list[dict[str, Any]]:
    """The same, one row per customer and coverage end with its machine count and the
    customer's contacts: the sales desk's call list (the console's contracts page)."""
    async with ctx.services.db.connect() as conn:
        return await ctx.services.desk.expiring_contracts(conn, p.within_days, ctx.now)


# ----------------------------------------------------------------------------- incidents
class OpenIncident(msgspec.Struct, forbid_unknown_fields=True):
    machine: str
    category: Category
    severity: Severity
    note: str = ""


@method("incidents.open", "technician", OpenIncident)
async def open_incident(ctx: Context, p: OpenIncident) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        agent = await store.get_agent(conn, p.machine)
        incident_id = await ctx.services.desk.open_incident(
            conn, agent, kind="reported", subject="", category=p.category, severity=p.severity,
            opened_by=ctx.caller.name, detail=p.note, now=ctx.now)
        await service.update_incident(conn, incident_id, touched=True)
        return await _incident_view(conn, incident_id)


async def _incident_view(conn: Any, incident_id: int) -> dict[str, Any]:
    decision = await service.latest_decision(conn, incident_id)
    return {**dataclasses.asdict(await service.get_incident(conn, incident_id)),
            "decision": None if decision is None else dataclasses.asdict(decision)}


class ListIncidents(msgspec.Struct, forbid_unknown_fields=True):
    open: bool = False
    customer: str | None = None
    machine: str | None = None


@method("incidents.list", "viewer", ListIncidents)
async def list_incidents(ctx: Context, p: ListIncidents) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        customer_id = await store.customer_id_of(conn, p.customer)
        agent_id = (await store.get_agent(conn, p.machine)).id if p.machine else None
        rows = []
        for incident in await service.list_incidents(conn, open_only=p.open,
                                                     customer_id=customer_id, agent_id=agent_id):
            decision = await service.latest_decision(conn, incident.id)  # None: no terms yet
            rows.append({**dataclasses.asdict(incident),
                         **{key: getattr(decision, key, None) for key in ("action", "fee_vnd", "due_at")}})
    return rows


class IncidentRef(msgspec.Struct, forbid_unknown_fields=True):
    id: int


@method("incidents.show", "viewer", IncidentRef)
async def show_incident(ctx: Context, p: IncidentRef) -> dict[str, Any]:
    async with ctx.services.db.connect() as conn:
        return await _incident_view(conn, p.id)


@method("incidents.explain", "viewer", IncidentRef)
async def explain_incident(ctx: Context, p: IncidentRef) -> dict[str, Any]:
    async with ctx.services.db.connect() as conn:
        incident = await service.get_incident(conn, p.id)
        decision = await service.latest_decision(conn, p.id)
        waits = await service.list_waits(conn, p.id)
    if decision is None:
        raise Conflict(f"incident {p.id} has no decision")
    return {"incident": p.id, "category": incident.category, "severity": incident.severity,
            "action": decision.action, "covered": decision.covered,
            "fee_vnd": decision.fee_vnd, "quote_vnd": decision.quote_vnd,
            "due_at": decision.due_at, "reasons": decision.reasons,
            "explanation": decision.explanation,
            "facts": decision.facts, "waiting_on": incident.waiting_on,
            "paused": [{"on_whom": w.on_whom, "note": w.note, "started_at": w.started_at,
                        "ended_at": w.ended_at, "started_by": w.started_by,
                        "ended_by": w.ended_by} for w in waits]}


class ResolveIncident(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    note: str


@method("incidents.resolve", "technician", ResolveIncident)
async def resolve_incident(ctx: Context, p: ResolveIncident) -> dict[str, Any]:
    if not p.note.strip():
        raise ConfigError("--note must say how it was resolved")
    async with ctx.services.db.transaction() as conn:
        await service.resolve_incident(conn, p.id, p.note, ctx.now)
        await service.update_incident(conn, p.id, touched=True)
        await service.forget_conditions_of(conn, p.id)
        await ctx.audit(conn, "incident.resolve", f"incident:{p.id}", note=p.note)
        return await _incident_view(conn, p.id)


@method("incidents.redecide", "technician", IncidentRef)
async def redecide_incident(ctx: Context, p: IncidentRef) -> dict[str, Any]:
    """Decide again with today's facts (agent back online, a fix released, coverage bought)."""
    async with ctx.services.db.transaction() as conn:
        await ctx.services.desk.touch(conn, p.id)
        before = await service.latest_decision(conn, p.id)
        decision = await ctx.services.desk.decide(conn, p.id, ctx.now)
        escalated = decision["action"] in ONSITE_ACTIONS and (
            before is None or before.action not in ONSITE_ACTIONS)
        incident = await service.get_incident(conn, p.id)
        await notify_incident(conn, p.id, "incident.escalated" if escalated else "incident.updated",
                              ctx.now, visit_id=decision["visit"],
                              urgent_from=await ctx.services.desk.urgent_from(
                                  conn, incident.agent_id))
        await ctx.audit(conn, "incident.redecide", f"incident:{p.id}",
                        decided=decision["action"])
    return decision


class WaitIncident(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    on: Literal["customer", "vendor", "third_party"] = "customer"
    note: str = ""


@method("incidents.wait", "technician", WaitIncident)
async def wait_incident(ctx: Context, p: WaitIncident) -> dict[str, Any]:
    """The incident waits on someone (the customer to be on site, to answer): its due-time
    clock stops until `resume`."""
    async with ctx.services.db.transaction() as conn:
        incident = await service.get_incident(conn, p.id)
        if incident.status != "open":
            raise Conflict(f"incident {p.id} is not open")
        if incident.waiting_on:
            raise Conflict(f"incident {p.id} already waits on {incident.waiting_on}")
        await ctx.services.desk.touch(conn, p.id)
        await service.start_wait(conn, incident_id=p.id, on_whom=p.on, note=p.note,
                                 by=ctx.caller.name, now=ctx.now)
        await ctx.services.desk.decide(conn, p.id, ctx.now)
        await ctx.audit(conn, "incident.wait", f"incident:{p.id}", on=p.on, note=p.note)
        return await _incident_view(conn, p.id)


@method("incidents.resume", "technician", IncidentRef)
async def resume_incident(ctx: Context, p: IncidentRef) -> dict[str, Any]:
    """The wait is over: the clock runs again and the due time moves out by the business
    time it was paused."""
    async with ctx.services.db.transaction() as conn:
        await service.end_wait(conn, p.id, ctx.caller.name, ctx.now)
        decision = await ctx.services.desk.decide(conn, p.id, ctx.now)
        await ctx.audit(conn, "incident.resume", f"incident:{p.id}",
                        due_at=decision["due_at"])
        return await _incident_view(conn, p.id)


# ----------------------------------------------------------------------------- visits
class ListVisits(msgspec.Struct, forbid_unknown_fields=True):
    due: Literal["today", "all"] = "all"
    completed: bool = False
    customer: str | None = None


@method("visits.list", "viewer", ListVisits)
async def list_visits(ctx: Context, p: ListVisits) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        customer_id = await store.customer_id_of(conn, p.customer)
        rows = await service.list_visits(conn, open_only=not p.completed, customer_id=customer_id)
        if p.due == "today":
            today = []
            for row in rows:
                calendar = customer_calendar(ctx.services.desk.policy,
                                             await store.get_customer(conn, row.customer_id))
                if calendar.local(row.due_at).date() <= calendar.local(ctx.now).date():
                    today.append(row)
            rows = today
    return [dataclasses.asdict(row) for row in rows]


class AssignVisit(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    technician: str


@method("visits.assign", "technician", AssignVisit)
async def assign_visit(ctx: Context, p: AssignVisit) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        visit = await service.get_visit(conn, p.id)
        if visit.status == "completed":
            raise Conflict(f"visit {p.id} is already completed")
        if p.technician not in {t.name for t in await store.list_technicians(conn)}:
            raise ConfigError(f"no technician {p.technician!r}")
        await service.update_visit(conn, p.id, technician=p.technician, status="assigned")
        await ctx.services.desk.touch(conn, visit.incident_id)
        await ctx.audit(conn, "visit.assign", f"visit:{p.id}", technician=p.technician)
        return dataclasses.asdict(await service.get_visit(conn, p.id))


class CompleteVisit(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    note: str


@method("visits.complete", "technician", CompleteVisit)
async def complete_visit(ctx: Context, p: CompleteVisit) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        visit = await service.get_visit(conn, p.id)
        if visit.status == "completed":
            raise Conflict(f"visit {p.id} is already completed")
        await service.update_visit(conn, p.id, status="completed", completed_at=ctx.now,
                                   note=p.note)
        await ctx.services.desk.touch(conn, visit.incident_id)
        await ctx.audit(conn, "visit.complete", f"visit:{p.id}", fee_vnd=visit.fee_vnd,
                        note=p.note)
        return dataclasses.asdict(await service.get_visit(conn, p.id))
