"""Rollout methods: start one, follow it, pause, resume, cancel, retry the failed."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from careline.coordinator.api import Context, method
from careline.coordinator.policy import waves
from careline.coordinator.policy.overrides import target
from careline.coordinator.rollouts import INSTALL_WINDOW_KEY, release_by_id
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import rollouts as rstore
from careline.coordinator.storage import service
from careline.coordinator.storage import updates as ustore
from careline.shared.errors import ConfigError, Conflict, NotFound


class StartRollout(msgspec.Struct, forbid_unknown_fields=True):
    release: str  # release id, or "PRODUCT VERSION"
    customer: str | None = None
    waves: str | None = None  # cumulative percents "5,25,100"


@method("rollouts.start", "technician", StartRollout)
async def start(ctx: Context, p: StartRollout) -> dict[str, Any]:
    try:
        percents = waves.parse_percents(p.waves) if p.waves else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    async with ctx.services.db.transaction() as conn:
        if p.release.isdigit():
            release = await release_by_id(conn, int(p.release))
        else:
            product, _, version = p.release.partition(" ")
            found = await ustore.find_releases(conn, product, version.strip() or None)
            if len(found) != 1:
                raise NotFound(f"no single release matches {p.release!r}; give its id")
            release = found[0]
        customer_id = await store.customer_id_of(conn, p.customer)
        rollout_id = await ctx.services.rollouts.start(
            conn, release, actor=ctx.caller.name, customer_id=customer_id, percents=percents,
            now=ctx.now)
        return await ctx.services.rollouts.summary(conn, rollout_id, ctx.now)


class ListRollouts(msgspec.Struct, forbid_unknown_fields=True):
    open: bool = False


@method("rollouts.list", "viewer", ListRollouts)
async def list_rollouts(ctx: Context, p: ListRollouts) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        rows = []
        for rollout in await rstore.list_rollouts(conn, ("running", "paused") if p.open else None):
            summary = await ctx.services.rollouts.summary(conn, rollout.id, ctx.now)
            rows.append({
                **dataclasses.asdict(rollout),
                **{key: sum(w[key] for w in summary["waves"])
                   for key in ("targeted", "succeeded", "failed")},
                "not_covered": len(summary["not_covered"]), "in_scope": summary["in_scope"],
                "overdue": summary["counts"]["overdue"]})
    return rows


class RolloutRef(msgspec.Struct, forbid_unknown_fields=True):
    id: int


@method("rollouts.show", "viewer", RolloutRef)
async def show(ctx: Context, p: RolloutRef) -> dict[str, Any]:
    async with ctx.services.db.connect() as conn:
        return await ctx.services.rollouts.summary(conn, p.id, ctx.now)


async def _set(ctx: Context, rollout_id: int, status: str) -> rstore.Rollout:
    async with ctx.services.db.transaction() as conn:
        return await ctx.services.rollouts.set_status(conn, rollout_id, status,
                                                         ctx.caller.name, ctx.now)


@method("rollouts.pause", "technician", RolloutRef)
async def pause(ctx: Context, p: RolloutRef) -> rstore.Rollout:
    return await _set(ctx, p.id, "paused")


@method("rollouts.resume", "technician", RolloutRef)
async def resume(ctx: Context, p: RolloutRef) -> rstore.Rollout:
    return await _set(ctx, p.id, "running")


@method("rollouts.cancel", "technician", RolloutRef)
async def cancel(ctx: Context, p: RolloutRef) -> rstore.Rollout:
    return await _set(ctx, p.id, "cancelled")


@method("rollouts.retry_failed", "technician", RolloutRef)
async def retry_failed(ctx: Context, p: RolloutRef) -> dict[str, Any]:
    """Send the release again to failed and timed-out machines; resumes a paused rollout
    and reopens a completed one (its failed machines were handed to a technician)."""
    async with ctx.services.db.transaction() as conn:
        rollout = await rstore.get_rollout(conn, p.id)
        if rollout.status not in ("running", "paused", "completed"):
            raise Conflict(f"rollout {p.id} is {rollout.status}")
        count = await rstore.reset_failed(conn, p.id, ctx.now)
        await rstore.update_rollout(conn, p.id, status="running", updated_at=ctx.now,
                                    reason=f"{count} failed machines retried by {ctx.caller.name}")
        await ctx.audit(conn, "rollout.retry_failed", f"rollout:{p.id}", machines=count)
        return {"id": p.id, "retried": count}


class InstallWindowParams(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    window: str | None  # "18:00-07:00" local; None: any time the product is closed


@method("customers.install_window", "technician", InstallWindowParams)
async def set_install_window(ctx: Context, p: InstallWindowParams) -> dict[str, Any]:
    """The customer level of `rollouts.install_window` (see `policy set`), under its own
    command because technicians set it, not only admins; None drops the override."""
    if p.window is not None:
        try:
            waves.InstallWindow.setting(p.window)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    key = INSTALL_WINDOW_KEY
    async with ctx.services.db.transaction() as conn:
        customer = await store.get_customer(conn, p.customer)
        owner = target("customer", customer.id)
        previous = (await service.overrides_by_target(conn)).get(owner, {}).get(key)
        if p.window is None:
            await service.unset_override(conn, owner, key)
        else:
            await service.set_override(conn, target=owner, key=key, value=p.window,
                                       by=ctx.caller.name, now=ctx.now)
        await ctx.audit(conn, "policy.unset" if p.window is None else "policy.set", owner,
                        key=key, value=p.window, previous=previous)
        window, source = ctx.services.policy_layers.value(
            key, await service.overrides_by_target(conn), customer.id)
        return {"customer": customer.name, "install_window": window, "source": source}
