"""Enrollment: a token buys one machine, and a reinstalled PC gets its machine back.

A machine is what people see (history, incidents, visits, contract seat); a key is what
its agent proves. After a reinstall the PC enrolls with a new key and the same hardware
identity: linking it gives the machine the new key (the old one stops working), so nothing
is left behind on a dead record and the contract counts one seat. Linking is automatic
only on a strong match with a machine that is not online (policy/identity.py), or when
the technician names the machine (`careline-agent enroll --replaces`); otherwise the new
machine is enrolled on its own and listed by `careline agents candidates` until a
technician links it (`careline agents replace OLD NEW`) or leaves it be.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.policy.identity import Candidate, link_decision, matched, strength
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage import service
from careline.shared import protocol as p
from careline.shared.errors import ConfigError, Conflict, ProtocolError
from careline.shared.hardware import valid
from careline.shared.keys import agent_id_for


@dataclass(frozen=True)
class Enrollment:
    machine_id: str
    customer_id: int
    relinked: bool  # an existing machine got this key: close its old key's connections
    note: str  # why it was linked, or what was proposed


async def enroll_machine(
    conn: AsyncConnection, token: store.EnrollmentGrant, request: p.EnrollRequest,
    now: dt.datetime, offline_after: dt.timedelta,
) -> Enrollment:
    """Register `request`'s key with the token's customer: as the machine it replaces, or
    as a new machine within its contract's limit."""
    if not valid(request.hardware):
        raise ProtocolError("hardware must map uuid/serial/disk/mac to SHA-256 hex digests")
    customer_id = token.customer_id
    actor = f"enrollment-token:{token.id}"
    if request.replaces:
        machine = await store.get_agent(conn, request.replaces)
        if machine.customer_id != customer_id:
            raise ConfigError(f"machine {request.replaces} belongs to another customer")
        note = f"technician says it replaces {machine.id} (--replaces)"
        await relink(conn, machine, request, actor=actor, note=note, now=now)
        return Enrollment(machine.id, customer_id, True, note)
    rows = await store.machines_matching(conn, customer_id, request.hardware)
    link = link_decision([
        Candidate(row.id, matched(request.hardware, store.hardware_of(row)),
                  online=row.presence.status(now, offline_after) == "online",
                  revoked=row.revoked_at is not None)
        for row in rows if row.replaced_by is None
    ])
    if link.kind == "auto":
        machine = next(row for row in rows if row.id == link.machine)
        await relink(conn, machine, request, actor=actor, note=link.reason, now=now)
        return Enrollment(machine.id, customer_id, True, link.reason)
    await _check_seat(conn, token, now)
    agent_id = agent_id_for(request.public_key)
    await store.add_agent(
        conn, agent_id=agent_id, customer_id=customer_id, public_key=request.public_key,
        hostname=request.hostname[:255], os=request.os[:100],
        agent_version=request.agent_version[:40], now=now, contract_id=token.contract_id,
        site_id=token.site_id, hardware=request.hardware,
    )
    note = f"proposed: {link.reason}" if link.kind == "propose" else ""
    await store.record_audit(conn, actor=actor, action="agent.enroll", target=f"agent:{agent_id}",
                             detail={"hostname": request.hostname, "note": note}, now=now)
    return Enrollment(agent_id, customer_id, False, note)


async def _check_seat(conn: AsyncConnection, token: store.EnrollmentGrant,
                      now: dt.datetime) -> None:
    """Refuse a new machine past its contract's machine limit (machines, not keys)."""
    customer_id = token.customer_id
    current = await service.current_contract(conn, customer_id, now.date())
    contract = (await service.get_contract(conn, token.contract_id) if token.contract_id
                else current)
    if contract is None or contract.machines is None:
        return
    used = await store.count_seats(conn, contract.id, customer_id,
                                   default_contract=current is not None
                                   and current.id == contract.id)
    if used >= contract.machines:
        raise Conflict(f"contract {contract.id} allows {contract.machines} machines and"
                       f" has {used}: revoke one or raise the limit")


async def relink(
    conn: AsyncConnection, machine: store.Agent, request: p.EnrollRequest, *,
    actor: str, note: str, now: dt.datetime,
) -> None:
    """Give `machine` the new key of its reinstalled agent; complete its open on-site
    reinstall, which this re-enrollment is the end of."""
    old_key = machine.key_id or machine.id
    new_key = agent_id_for(request.public_key)
    await store.rekey_agent(
        conn, machine.id, public_key=request.public_key, key_id=new_key,
        hostname=request.hostname[:255], os=request.os[:100],
        agent_version=request.agent_version[:40], hardware=request.hardware, now=now)
    visits = await service.complete_reinstall_visits(
        conn, machine.id, f"reinstalled: {machine.id} re-enrolled with key {new_key}"
        f" (was {old_key}); {note}", now)
    await store.record_audit(conn, actor=actor, action="agent.relink",
                             target=f"agent:{machine.id}",
                             detail={"old_key": old_key, "new_key": new_key, "note": note,
                                     "hostname": request.hostname, "visits_completed": visits},
                             now=now)


async def replace(
    conn: AsyncConnection, old: store.Agent, new: store.Agent, *, actor: str,
    now: dt.datetime,
) -> str:
    """A technician links `new` (enrolled on its own) to the machine `old` it reinstalls:
    `old` takes over its key, `new` is revoked (its few records stay where they are)."""
    if old.id == new.id:
        raise ConfigError("a machine cannot replace itself")
    if old.customer_id != new.customer_id:
        raise ConfigError(f"{new.id} and {old.id} belong to different customers")
    if new.revoked_at is not None:
        raise Conflict(f"agent {new.id} is revoked: enroll the reinstalled PC again")
    public_key = new.public_key
    await store.retire_replaced(conn, new.id, old.id, now)
    request = p.EnrollRequest(
        token="", public_key=public_key, hostname=new.hostname, os=new.os,
        agent_version=new.agent_version,
        hardware={k: v for k, v in store.hardware_of(new).items() if v})
    note = f"technician linked {new.id} to {old.id}"
    await relink(conn, old, request, actor=actor, note=note, now=now)
    return note


async def mark_distinct(
    conn: AsyncConnection, old: store.Agent, new: store.Agent, *, actor: str,
    now: dt.datetime,
) -> None:
    """A proposed pair are different PCs (a cloned disk image): no longer proposed."""
    if old.id == new.id:
        raise ConfigError("a machine is not distinct from itself")
    first, second = sorted((old, new), key=lambda r: (r.enrolled_at, r.id))
    await store.mark_distinct(conn, first.id, second.id, actor, now)
    await store.record_audit(conn, actor=actor, action="agent.distinct",
                             target=f"agent:{second.id}", detail={"not_a_reinstall_of":
                                                                     first.id}, now=now)


async def candidates(
    conn: AsyncConnection, customer_id: int | None = None
) -> list[dict[str, Any]]:
    """Machines enrolled on their own whose hardware matches an earlier machine of the same
    customer: possible reinstalls for a technician to link (or leave)."""
    rows = [r for r in await store.list_agents(conn, customer_id) if r.replaced_by is None]
    distinct = await store.distinct_pairs(conn)
    found = []
    for new in rows:
        if new.revoked_at is not None:
            continue
        for old in rows:
            if old.customer_id != new.customer_id or (
                    (old.enrolled_at, old.id) >= (new.enrolled_at, new.id)):
                continue  # each pair once, the earlier machine as the one reinstalled
            if (old.id, new.id) in distinct:
                continue  # a technician said: different PCs
            fields = matched(store.hardware_of(new), store.hardware_of(old))
            if fields:
                found.append({
                    "customer": new.customer, "old": old.id,
                    "old_hostname": old.hostname, "new": new.id,
                    "new_hostname": new.hostname, "strength": strength(fields),
                    "matching": ", ".join(fields),
                })
    return found
