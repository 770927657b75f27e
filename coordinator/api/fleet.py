"""Fleet methods: customers, enrollment tokens, agents, technicians, audit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from typing import Annotated, Any

import msgspec

from careline.coordinator.api import Context, NoParams, method
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import service
from careline.shared.errors import ConfigError
from careline.shared.keys import JoinString, new_token, token_hash

AGENT_LIST_FIELDS = ("id", "customer", "site", "hostname", "status", "last_seen", "agent_version", "products")


def agent_view(ctx: Context, row: store.Agent, *, full: bool = False) -> dict[str, Any]:
    """An agent as technicians see it: its status and products instead of its raw health
    report (all of it, and its public key, when `full`)."""
    view = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)
            if f.name not in ("public_key", "health", "connected")}
    view["status"] = row.presence.status(ctx.now, ctx.services.hub.offline_after)
    view["products"] = {p["name"]: {"version": p["version"], "running": p["running"]}
                        for p in row.products}
    if full:
        view["health"] = row.health or {}
        view["public_key"] = row.public_key.hex()
    return view


# ----------------------------------------------------------------------------- customers
class AddCustomer(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    timezone: str = "Asia/Ho_Chi_Minh"


@method("customers.add", "technician", AddCustomer)
async def add_customer(ctx: Context, p: AddCustomer) -> store.Customer:
    if not p.name.strip():
        raise ConfigError("customer name must not be empty")
    try:
        zoneinfo.ZoneInfo(p.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {p.timezone!r}") from None
    async with ctx.services.db.transaction() as conn:
        row = await store.add_customer(conn, p.name.strip(), p.timezone, ctx.now)
        await ctx.audit(conn, "customer.add", f"customer:{row.id}", name=row.name)
    return row


@method("customers.list", "viewer")
async def list_customers(ctx: Context, _: NoParams) -> list[store.Customer]:
    async with ctx.services.db.connect() as conn:
        return await store.list_customers(conn)


class AddSite(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    name: str


@method("sites.add", "technician", AddSite)
async def add_site(ctx: Context, p: AddSite) -> dict[str, Any]:
    if not p.name.strip():
        raise ConfigError("site name must not be empty")
    async with ctx.services.db.transaction() as conn:
        customer = await store.get_customer(conn, p.customer)
        row = await store.add_site(conn, customer.id, p.name.strip())
        await ctx.audit(conn, "site.add", f"customer:{customer.id}", site=row.name)
    return dataclasses.asdict(row)


class ListSites(msgspec.Struct, forbid_unknown_fields=True):
    customer: str | None = None


@method("sites.list", "viewer", ListSites)
async def list_sites(ctx: Context, p: ListSites) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        customer_id = await store.customer_id_of(conn, p.customer)
        return [dataclasses.asdict(site) for site in await store.list_sites(conn, customer_id)]


# ----------------------------------------------------------------------------- tokens
class CreateToken(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    uses: int = 1
    expires_seconds: float = 86400.0
    contract: int | None = None  # machines join it; default: the customer's current contract
    site: str | None = None  # the customer's site (id or name) the machines are at


@method("tokens.create", "technician", CreateToken)
async def create_token(ctx: Context, p: CreateToken) -> dict[str, Any]:
    if p.uses < 1:
        raise ConfigError("--uses must be at least 1")
    if p.expires_seconds <= 0:
        raise ConfigError("--expires must be in the future")
    token = new_token("cle")
    expires_at = ctx.now + dt.timedelta(seconds=p.expires_seconds)
    async with ctx.services.db.transaction() as conn:
        customer = await store.get_customer(conn, p.customer)
        if p.contract is not None:
            contract = await service.get_contract(conn, p.contract)
            if contract.customer_id != customer.id:
                raise ConfigError(f"contract {p.contract} belongs to another customer")
        site_id = (await store.get_site(conn, customer.id, p.site)).id if p.site else None
        token_id = await store.add_enrollment_token(
            conn, token_hash=token_hash(token), customer_id=customer.id, uses_allowed=p.uses,
            expires_at=expires_at, created_by=ctx.caller.name, now=ctx.now,
            contract_id=p.contract, site_id=site_id,
        )
        await ctx.audit(
            conn, "token.create", f"customer:{customer.id}", token_id=token_id, uses=p.uses,
            expires_at=expires_at,
        )
    pin = ctx.services.updates.root_pin()
    join = JoinString(ctx.services.public_url, token, ctx.services.ca_fingerprint, pin)
    return {
        "join": str(join), "token_id": token_id, "customer_id": customer.id,
        "uses": p.uses, "expires_at": expires_at, "root_pin": pin or None,
    }


# ----------------------------------------------------------------------------- agents
class ListAgents(msgspec.Struct, forbid_unknown_fields=True):
    customer: str | None = None


@method("agents.list", "viewer", ListAgents)
async def list_agents(ctx: Context, p: ListAgents) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        customer_id = await store.customer_id_of(conn, p.customer)
        rows = await store.list_agents(conn, customer_id)
    return [agent_view(ctx, row) for row in rows]


class AgentRef(msgspec.Struct, forbid_unknown_fields=True):
    id: str


@method("agents.show", "viewer", AgentRef)
async def show_agent(ctx: Context, p: AgentRef) -> dict[str, Any]:
    async with ctx.services.db.connect() as conn:
        row = await store.get_agent(conn, p.id)
        view = agent_view(ctx, row, full=True)
        view["recent_events"] = await store.list_events(conn, row.id, limit=20)
    quota = ctx.services.hub.quotas.get(row.id)  # this process's count since it started
    view["refused"] = {"over_quota": quota.refused if quota else 0,
                       "unknown_kind_events": quota.unknown_kinds if quota else 0}
    return view


class HealthHistory(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    hours: Annotated[int, msgspec.Meta(ge=1, le=24 * 31)] = 24


@method("agents.health_history", "viewer", HealthHistory)
async def health_history(ctx: Context, p: HealthHistory) -> dict[str, Any]:
    """The machine's health samples of the last `hours`, oldest first (at most one every
    15 minutes, kept 30 days)."""
    from careline.coordinator.storage import health

    async with ctx.services.db.connect() as conn:
        row = await store.get_agent(conn, p.id)
        samples = await health.list_samples(conn, row.id, ctx.now - dt.timedelta(hours=p.hours))
    return {"id": row.id, "hostname": row.hostname, "samples": samples}


@method("agents.revoke", "technician", AgentRef)
async def revoke_agent(ctx: Context, p: AgentRef) -> dict[str, Any]:
    async with ctx.services.db.transaction() as conn:
        row = await store.get_agent(conn, p.id)
        await store.revoke_agent(conn, row.id, ctx.now)
        await ctx.audit(conn, "agent.revoke", f"agent:{row.id}", hostname=row.hostname)
    await ctx.services.hub.disconnect_revoked(row.id)
    return {"id": row.id, "revoked_at": ctx.now}


@method("agents.candidates", "viewer", ListAgents)
async def agent_candidates(ctx: Context, p: ListAgents) -> list[dict[str, Any]]:
    """Machines whose hardware matches an earlier machine of the same customer: possible
    reinstalls that were not linked by themselves (see coordinator/enrollment.py)."""
    from careline.coordinator.enrollment import candidates

    async with ctx.services.db.connect() as conn:
        return await candidates(conn, await store.customer_id_of(conn, p.customer))


class ReplaceAgent(msgspec.Struct, forbid_unknown_fields=True):
    old: str
    new: str


@method("agents.replace", "technician", ReplaceAgent)
async def replace_agent(ctx: Context, p: ReplaceAgent) -> dict[str, Any]:
    """NEW is a reinstall of OLD: OLD keeps its id, history and seat and takes NEW's key."""
    from careline.coordinator.enrollment import replace

    async with ctx.services.db.transaction() as conn:
        old = await store.get_agent(conn, p.old)
        new = await store.get_agent(conn, p.new)
        note = await replace(conn, old, new, actor=ctx.caller.name, now=ctx.now)
        row = await store.get_agent(conn, old.id)
    await ctx.services.hub.relinked(old.id, new.id, ctx.now)
    return {**agent_view(ctx, row), "replaced": new.id, "note": note}


@method("agents.distinct", "technician", ReplaceAgent)
async def distinct_agents(ctx: Context, p: ReplaceAgent) -> dict[str, Any]:
    """OLD and NEW share hardware but are different PCs: stop proposing them as a reinstall."""
    from careline.coordinator.enrollment import mark_distinct

    async with ctx.services.db.transaction() as conn:
        old = await store.get_agent(conn, p.old)
        new = await store.get_agent(conn, p.new)
        await mark_distinct(conn, old, new, actor=ctx.caller.name, now=ctx.now)
    return {"old": old.id, "new": new.id, "distinct": True}


# ----------------------------------------------------------------------------- technicians
class AddTechnician(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    role: store.Role


@method("technicians.add", "admin", AddTechnician)
async def add_technician(ctx: Context, p: AddTechnician) -> dict[str, Any]:
    """The new technician, with their token: shown this once, stored only as a hash."""
    token = new_token("clt")
    async with ctx.services.db.transaction() as conn:
        row = await store.add_technician(conn, p.name, p.role, token_hash(token), ctx.now)
        await ctx.audit(conn, "technician.add", f"technician:{p.name}", role=p.role)
    return {**dataclasses.asdict(row), "token": token}


@method("technicians.list", "viewer")
async def list_technicians(ctx: Context, _: NoParams) -> list[store.Technician]:
    async with ctx.services.db.connect() as conn:
        return await store.list_technicians(conn)


class TechnicianRef(msgspec.Struct, forbid_unknown_fields=True):
    name: str


@method("technicians.revoke", "admin", TechnicianRef)
async def revoke_technician(ctx: Context, p: TechnicianRef) -> dict[str, Any]:
    if p.name == ctx.caller.name:
        raise ConfigError("a technician cannot revoke their own token")
    async with ctx.services.db.transaction() as conn:
        await store.revoke_technician(conn, p.name, ctx.now)
        await ctx.audit(conn, "technician.revoke", f"technician:{p.name}")
    await ctx.services.technicians.disconnect(p.name)
    return {"name": p.name, "revoked_at": ctx.now}


# ----------------------------------------------------------------------------- audit
class ListAudit(msgspec.Struct, forbid_unknown_fields=True):
    limit: int = 100


@method("audit.list", "viewer", ListAudit)
async def list_audit(ctx: Context, p: ListAudit) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        return await store.list_audit(conn, limit=max(1, min(p.limit, 10_000)))
