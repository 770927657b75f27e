"""Live commands to agents over their open connections: ping, diagnose, restart a product.

Each is one of the agent's fixed typed actions, sent through the AgentHub. A command to many
machines goes to all of them at once and answers stream back as they arrive; a slow or dead
agent only ever costs its own timeout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from careline.coordinator.api import Context, method
from careline.coordinator.hub import Outcome
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import service
from careline.shared import protocol as p
from careline.shared.errors import ConfigError, NotFound

MAX_TIMEOUT = 120.0
# What a diagnostics bundle may exceed `max_bytes` by: the agent caps the logs it collects,
# and the system facts and JSON around them add a little.
DIAGNOSTICS_SLACK = 16 << 10

log = logging.getLogger("careline.coordinator")


async def _machine(ctx: Context, ref: str) -> store.AgentPresence:
    async with ctx.services.db.connect() as conn:
        return (await store.get_agent(conn, ref)).presence


async def _call(ctx: Context, agent: store.AgentPresence, action: p.Action,
                timeout: float) -> dict[str, Any]:
    """Run one action on one agent (AgentHub.call): its answer, or why there is none."""
    return _answer(await ctx.services.hub.call(agent, action, timeout), timeout)


def _answer(outcome: Outcome, timeout: float) -> dict[str, Any]:
    agent_id, result = outcome.agent_id, outcome.result
    if result is None:
        if outcome.failure == "timeout":
            return {"machine": agent_id, "status": "no answer", "timeout": timeout}
        if outcome.failure == "offline":
            return {"machine": agent_id, "status": "offline"}
        return {"machine": agent_id, "status": "failed", "error": outcome.error}
    rtt_ms = round(outcome.seconds * 1000, 2)
    if not result.ok:
        return {"machine": agent_id, "status": "failed", "error": result.error, "rtt_ms": rtt_ms}
    return {"machine": agent_id, "status": "ok", "rtt_ms": rtt_ms, "data": result.data}


def _timeout(seconds: float) -> float:
    if not 0 < seconds <= MAX_TIMEOUT:
        raise ConfigError(f"timeout must be between 0 and {MAX_TIMEOUT:.0f} seconds")
    return seconds


# ----------------------------------------------------------------------------- ping
class PingParams(msgspec.Struct, forbid_unknown_fields=True):
    machine: str | None = None
    customer: str | None = None
    all: bool = False
    timeout: float = 5.0


@method("agents.ping", "viewer", PingParams, streams=True)
async def ping(ctx: Context, p_: PingParams) -> AsyncIterator[dict[str, Any]]:
    """Yields one answer per machine as it arrives, then a summary."""
    timeout = _timeout(p_.timeout)
    if sum((p_.machine is not None, p_.customer is not None, p_.all)) != 1:
        raise ConfigError("give exactly one of --machine, --customer or --all")
    if p_.machine is not None:
        rows = [await _machine(ctx, p_.machine)]
    else:
        async with ctx.services.db.connect() as conn:
            customer_id = await store.customer_id_of(conn, p_.customer)
            rows = await store.list_presence(conn, customer_id)
    if not rows:
        raise NotFound("no enrolled machines match")
    hostnames = {r.id: r.hostname for r in rows}
    counts: dict[str, int] = {}
    for revoked in (r for r in rows if r.revoked_at is not None):
        counts["revoked"] = counts.get("revoked", 0) + 1
        yield {"machine": revoked.id, "hostname": revoked.hostname, "status": "revoked"}
    targets = [r for r in rows if r.revoked_at is None]
    async with ctx.services.db.transaction() as conn:
        await ctx.audit(conn, "agents.ping", p_.machine or p_.customer or "all",
                        machines=len(rows))
    rtts: list[float] = []
    async for outcome in ctx.services.hub.fan_out(targets, p.Ping(), timeout):
        answer = _answer(outcome, timeout)
        answer.pop("data", None)
        answer["hostname"] = hostnames[answer["machine"]]
        counts[answer["status"]] = counts.get(answer["status"], 0) + 1
        if "rtt_ms" in answer:
            rtts.append(answer["rtt_ms"])
        yield answer
    rtts.sort()
    yield {
        "summary": True, "machines": len(rows), **counts,
        "median_rtt_ms": rtts[len(rtts) // 2] if rtts else None,
    }


# ----------------------------------------------------------------------------- diagnose
class DiagnoseParams(msgspec.Struct, forbid_unknown_fields=True):
    machine: str
    incident: int | None = None
    log_lines: int = 200
    max_bytes: int = 256 << 10
    timeout: float = 30.0


@method("agents.diagnose", "technician", DiagnoseParams)
async def diagnose(ctx: Context, p_: DiagnoseParams) -> dict[str, Any]:
    if not 1 <= p_.log_lines <= 10_000:
        raise ConfigError("log_lines must be between 1 and 10000")
    if not 4096 <= p_.max_bytes <= p.MAX_MESSAGE_BYTES // 2:
        raise ConfigError(f"max_bytes must be between 4096 and {p.MAX_MESSAGE_BYTES // 2}")
    agent = await _machine(ctx, p_.machine)
    if p_.incident is not None:
        async with ctx.services.db.connect() as conn:
            await service.get_incident(conn, p_.incident)
    answer = await _call(
        ctx, agent, p.Diagnose(log_lines=p_.log_lines, max_bytes=p_.max_bytes),
        _timeout(p_.timeout),
    )
    if answer["status"] != "ok":
        raise ConfigError(f"{agent.id}: {answer['status']} {answer.get('error', '')}".strip())
    bundle = answer["data"]
    size = len(json.dumps(bundle))
    # The agent is asked for max_bytes; a hostile one may send more, up to a whole message.
    if size > p_.max_bytes + DIAGNOSTICS_SLACK:
        log.warning("agent %s sent %d bytes of diagnostics when %d were asked; not stored",
                    agent.id, size, p_.max_bytes)
        raise ConfigError(f"{agent.id} sent {size} bytes of diagnostics, more than the "
                          f"{p_.max_bytes} asked for; not stored")
    async with ctx.services.db.transaction() as conn:
        diag_id = await service.add_diagnostics(
            conn, agent_id=agent.id, incident_id=p_.incident, requested_by=ctx.caller.name,
            size=size, bundle=bundle, now=ctx.now,
        )
        await ctx.audit(conn, "agents.diagnose", f"agent:{agent.id}", diagnostics=diag_id,
                        incident=p_.incident)
    return {"id": diag_id, "machine": agent.id, "rtt_ms": answer["rtt_ms"], "bundle": bundle}


class MachineRef(msgspec.Struct, forbid_unknown_fields=True):
    machine: str


@method("diagnostics.list", "viewer", MachineRef)
async def list_diagnostics(ctx: Context, p_: MachineRef) -> list[dict[str, Any]]:
    async with ctx.services.db.connect() as conn:
        agent = await store.get_agent(conn, p_.machine)
        return [dataclasses.asdict(entry) for entry in await service.list_diagnostics(conn, agent.id)]


class DiagnosticsRef(msgspec.Struct, forbid_unknown_fields=True):
    id: int


@method("diagnostics.show", "viewer", DiagnosticsRef)
async def show_diagnostics(ctx: Context, p_: DiagnosticsRef) -> dict[str, Any]:
    async with ctx.services.db.connect() as conn:
        return dataclasses.asdict(await service.get_diagnostics(conn, p_.id))


# ----------------------------------------------------------------------------- restart
class RestartParams(msgspec.Struct, forbid_unknown_fields=True):
    machine: str
    product: str
    timeout: float = 60.0


@method("agents.restart_product", "technician", RestartParams)
async def restart_product(ctx: Context, p_: RestartParams) -> dict[str, Any]:
    agent = await _machine(ctx, p_.machine)
    answer = await _call(ctx, agent, p.RestartProduct(product=p_.product), _timeout(p_.timeout))
    async with ctx.services.db.transaction() as conn:
        await ctx.audit(conn, "agents.restart_product", f"agent:{agent.id}",
                        product=p_.product, outcome=answer["status"],
                        running=answer.get("data", {}).get("running"))
    if answer["status"] != "ok":
        raise ConfigError(
            f"restart of {p_.product} on {agent.id}: {answer['status']} "
            f"{answer.get('error', '')}".strip()
        )
    return {"machine": agent.id, "rtt_ms": answer["rtt_ms"], **answer["data"]}
