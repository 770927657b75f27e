"""Policy overrides per customer, site and machine: set, unset, show (issue 16)."""

from __future__ import annotations

from typing import Any

import msgspec

from careline.coordinator.api import Context, method
from careline.coordinator.policy.overrides import chain, parse_assignment, target
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import service
from careline.shared.errors import ConfigError, NotFound


class PolicyTarget(msgspec.Struct, forbid_unknown_fields=True):
    """Whose policy: a machine, a customer's site (with the customer), or a customer;
    none of them: the vendor's."""

    customer: str | None = None
    site: str | None = None
    machine: str | None = None


Owner = tuple[str, str, tuple[int | None, int | None, str | None]]


async def _owner(conn: Any, p: PolicyTarget) -> Owner:
    """(level, target, (customer, site, machine)): who owns the overrides, and the ids
    whose overrides apply to it (overrides.chain)."""
    if p.machine is not None:
        if p.customer or p.site:
            raise ConfigError("give --machine alone, or --customer (with --site)")
        agent = await store.get_agent(conn, p.machine)
        return ("machine", target("machine", agent.id),
                (agent.customer_id, agent.site_id, agent.id))
    if p.customer is None:
        if p.site:
            raise ConfigError("--site needs --customer")
        return "vendor", "", (None, None, None)
    customer = await store.get_customer(conn, p.customer)
    if p.site is None:
        return "customer", target("customer", customer.id), (customer.id, None, None)
    site = await store.get_site(conn, customer.id, p.site)
    return "site", target("site", site.id), (customer.id, site.id, None)


class SetPolicy(PolicyTarget, forbid_unknown_fields=True):
    assignments: list[str] = []  # KEY=VALUE


@method("policy.set", "admin", SetPolicy)
async def set_policy(ctx: Context, p: SetPolicy) -> list[dict[str, Any]]:
    """Override policy values for a customer, site or machine; all or nothing, each
    checked against the policy file's schema, and the result checked as a whole."""
    if not p.assignments:
        raise ConfigError("give at least one KEY=VALUE")
    layers = ctx.services.policy_layers
    values = dict(parse_assignment(text) for text in p.assignments)
    for key, value in values.items():
        layers.check(key, value)
    async with ctx.services.db.transaction() as conn:
        _level, owner, ids = await _owner(conn, p)
        if not owner:
            raise ConfigError("say whose policy: --customer C [--site S] or --machine M"
                              " (the vendor's is the policy file)")
        by_target = await service.overrides_by_target(conn)
        previous = dict(by_target.get(owner, {}))
        by_target[owner] = {**previous, **values}
        layers.resolve(chain(by_target, *ids))  # ConfigError names the bad key
        for key, value in values.items():
            await service.set_override(conn, target=owner, key=key, value=value,
                                       by=ctx.caller.name, now=ctx.now)
            await ctx.audit(conn, "policy.set", owner, key=key, value=value,
                            previous=previous.get(key))
        return layers.show(chain(by_target, *ids))


class UnsetPolicy(PolicyTarget, forbid_unknown_fields=True):
    keys: list[str] = []


@method("policy.unset", "admin", UnsetPolicy)
async def unset_policy(ctx: Context, p: UnsetPolicy) -> list[dict[str, Any]]:
    """Drop overrides: those values fall back to the level above."""
    if not p.keys:
        raise ConfigError("give at least one KEY")
    layers = ctx.services.policy_layers
    async with ctx.services.db.transaction() as conn:
        level, owner, ids = await _owner(conn, p)
        if not owner:
            raise ConfigError("say whose policy: --customer C [--site S] or --machine M")
        by_target = await service.overrides_by_target(conn)
        for key in p.keys:
            if key not in by_target.get(owner, {}):
                raise NotFound(f"this {level} has no override of {key}")
            previous = by_target[owner].pop(key)
            await service.unset_override(conn, owner, key)
            await ctx.audit(conn, "policy.unset", owner, key=key, previous=previous)
        return layers.show(chain(by_target, *ids))


@method("policy.show", "viewer", PolicyTarget)
async def show_policy(ctx: Context, p: PolicyTarget) -> list[dict[str, Any]]:
    """Every value that may vary by customer, in effect for the target, and its source:
    default, vendor, customer, site or machine."""
    async with ctx.services.db.connect() as conn:
        *_, ids = await _owner(conn, p)
        by_target = await service.overrides_by_target(conn)
    return ctx.services.policy_layers.show(chain(by_target, *ids))
