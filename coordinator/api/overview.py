"""Screens' methods: the fleet at a glance, incident lists a page at a time, the caller's language.

They answer from one aggregate query each (storage/views.py), so the web console's busiest
pages stay fast at 10,000 machines; the CLI and REST API can call them too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from careline.coordinator.api import Context, NoParams, method
from careline.coordinator.api.fleet import agent_view
from careline.coordinator.i18n import LANGUAGES
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import views
from careline.shared.errors import ConfigError

MAX_PAGE = 500


@method("fleet.overview", "viewer")
async def fleet_overview(ctx: Context, _: NoParams) -> dict[str, Any]:
    """Machines online, off (shut down cleanly), offline and needing attention (an open
    incident), per customer."""
    async with ctx.services.db.connect() as conn:
        rows = await views.fleet_overview(conn, ctx.now - ctx.services.hub.offline_after)
    customers = [dataclasses.asdict(row) for row in rows]
    totals = {key: sum(c[key] for c in customers)
              for key in ("machines", "online", "off", "offline", "needs_attention", "open_incidents")}
    return {"customers": customers, "totals": totals}


class LanguageParams(msgspec.Struct, forbid_unknown_fields=True):
    language: str


@method("profile.language", "viewer", LanguageParams, writes=True)
async def set_language(ctx: Context, p: LanguageParams) -> dict[str, Any]:
    """The caller's own language for the web console (and what it sends them)."""
    if p.language not in LANGUAGES:
        raise ConfigError(f"language must be one of {', '.join(LANGUAGES)}")
    async with ctx.services.db.transaction() as conn:
        await store.set_technician_language(conn, ctx.caller.name, p.language)
    return {"name": ctx.caller.name, "language": p.language}


class MachineJobs(msgspec.Struct, forbid_unknown_fields=True):
    machine: str
    limit: int = 20


@method("jobs.machine", "viewer", MachineJobs)
async def machine_jobs(ctx: Context, p: MachineJobs) -> list[dict[str, Any]]:
    """One machine's jobs (update, reinstall, verify), newest first."""
    if not 1 <= p.limit <= MAX_PAGE:
        raise ConfigError(f"limit must be 1..{MAX_PAGE}")
    async with ctx.services.db.connect() as conn:
        agent = await store.get_agent(conn, p.machine)
        return [dataclasses.asdict(job) for job in await views.machine_jobs(conn, agent.id, p.limit)]


class CustomerRef(msgspec.Struct, forbid_unknown_fields=True):
    customer: str


@method("rollouts.customer", "viewer", CustomerRef)
async def customer_rollouts(ctx: Context, p: CustomerRef) -> list[dict[str, Any]]:
    """Rollouts that reached the customer's machines, with how many succeeded or failed there."""
    async with ctx.services.db.connect() as conn:
        customer = await store.get_customer(conn, p.customer)
        return [dataclasses.asdict(r) for r in await views.customer_rollouts(conn, customer.id)]


class CustomerMachines(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    limit: int = 50
    offset: int = 0


@method("customers.machines", "viewer", CustomerMachines)
async def customer_machines(ctx: Context, p: CustomerMachines) -> dict[str, Any]:
    """One page of a customer's machines, each with its coverage today: the page's contracts
    and packages are read once and every entitlement computed from them in memory."""
    if not 1 <= p.limit <= MAX_PAGE or p.offset < 0:
        raise ConfigError(f"limit must be 1..{MAX_PAGE} and offset at least 0")
    async with ctx.services.db.connect() as conn:
        customer = await store.get_customer(conn, p.customer)
        total, rows = await store.agents_page(conn, customer.id, p.limit, p.offset)
        coverage = await ctx.services.desk.entitlements(
            conn, [row.coverage_key for row in rows], None, ctx.now)
    machines = [{**agent_view(ctx, row), "coverage": coverage[row.id].to_dict()} for row in rows]
    return {"total": total, "limit": p.limit, "offset": p.offset, "rows": machines}


class IncidentPage(msgspec.Struct, forbid_unknown_fields=True):
    open: bool = False
    customer: str | None = None
    machine: str | None = None
    limit: int = 50
    offset: int = 0


@method("incidents.page", "viewer", IncidentPage)
async def incidents_page(ctx: Context, p: IncidentPage) -> dict[str, Any]:
    """One page of incidents, open first, with the decision's action, fee and due time."""
    if not 1 <= p.limit <= MAX_PAGE or p.offset < 0:
        raise ConfigError(f"limit must be 1..{MAX_PAGE} and offset at least 0")
    async with ctx.services.db.connect() as conn:
        customer_id = await store.customer_id_of(conn, p.customer)
        agent_id = (await store.get_agent(conn, p.machine)).id if p.machine else None
        total, rows = await views.incidents_page(conn, open_only=p.open, customer_id=customer_id,
                                                 agent_id=agent_id, limit=p.limit, offset=p.offset)
    return {"total": total, "limit": p.limit, "offset": p.offset,
            "rows": [dataclasses.asdict(row) for row in rows]}
