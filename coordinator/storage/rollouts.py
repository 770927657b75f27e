"""Queries for rollouts and each machine's place in one."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.storage.fleet import (
    PRESENCE_COLUMNS,
    AgentPresence,
    CoverageKey,
    insert_row,
    rows_of,
    typed_one,
    typed_rows,
)
from careline.coordinator.storage.schema import (
    agents,
    customers,
    job_machines,
    rollout_machines,
    rollouts,
)


async def add_rollout(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return await insert_row(conn, rollouts, values, "rollout")


@dataclass(frozen=True, slots=True)
class Rollout:
    """A regulation (or bug-fix) release pushed in waves to every covered machine of the
    fleet (or of one customer)."""

    id: int
    release_id: int
    product: str
    version: str
    kind: str  # what it updates: the entitlement tiers say which kinds a machine is owed
    effective: dt.date | None  # the regulation's effective date: overdue after it
    customer_id: int | None  # None: the whole fleet
    percents: str  # the waves' cumulative shares, "5,25,100"
    status: str
    sent_waves: int
    reason: str
    started_by: str
    started_at: dt.datetime
    updated_at: dt.datetime
    last_targeting_at: dt.datetime | None


async def get_rollout(conn: AsyncConnection, rollout_id: int, lock: bool = False) -> Rollout:
    """A rollout; `lock` holds its row until the transaction ends, so coordinators sharing a
    PostgreSQL database never advance the same rollout at once (SQLite has one writer)."""
    query = sa.select(rollouts).where(rollouts.c.id == rollout_id)
    return await typed_one(conn, query.with_for_update() if lock else query, Rollout,
                           f"no rollout {rollout_id}")


async def list_rollouts(conn: AsyncConnection,
                        statuses: tuple[str, ...] | None = None) -> list[Rollout]:
    query = sa.select(rollouts).order_by(rollouts.c.id.desc())
    if statuses:
        query = query.where(rollouts.c.status.in_(statuses))
    return typed_rows(await conn.execute(query), Rollout)


async def update_rollout(conn: AsyncConnection, rollout_id: int, **values: Any) -> None:
    await conn.execute(rollouts.update().where(rollouts.c.id == rollout_id).values(**values))


async def add_machines(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert many; every row must carry the same keys (one executemany)."""
    if rows:
        await conn.execute(rollout_machines.insert(), rows)


@dataclass(frozen=True, slots=True)
class RolloutMachine:
    """One machine's place in a rollout (a `rollout_machines` row), with its customer's name,
    its agent's presence and the status of the job part it was sent, if any."""

    id: int
    rollout_id: int
    agent_id: str
    customer_id: int
    wave: int | None  # None: not placed (not covered)
    state: str  # pending, sent, succeeded, failed, timed_out, not_covered, retired
    job_id: int | None
    sent_at: dt.datetime | None
    finished_at: dt.datetime | None
    detail: str
    deadline_incident: bool  # its regulation_deadline incident is open
    from_version: str | None  # reported when targeted; None: unknown
    customer: str
    job_status: str | None
    presence: AgentPresence


async def machines_of(conn: AsyncConnection, rollout_id: int) -> list[RolloutMachine]:
    """Every machine of a rollout, in wave order."""
    query = (
        sa.select(rollout_machines, customers.c.name.label("customer"),
                  job_machines.c.status.label("job_status"),
                  *(agents.c[name].label(f"presence_{name}") for name in PRESENCE_COLUMNS))
        .select_from(
            rollout_machines.join(agents, agents.c.id == rollout_machines.c.agent_id)
            .join(customers, customers.c.id == rollout_machines.c.customer_id)
            .outerjoin(job_machines, sa.and_(job_machines.c.job_id == rollout_machines.c.job_id,
                                             job_machines.c.agent_id == rollout_machines.c.agent_id))
        )
        .where(rollout_machines.c.rollout_id == rollout_id)
        .order_by(rollout_machines.c.wave, rollout_machines.c.id)
    )
    machines = []
    for row in rows_of(await conn.execute(query)):
        presence = AgentPresence(*(row.pop(f"presence_{name}") for name in PRESENCE_COLUMNS))
        machines.append(RolloutMachine(**row, presence=presence))
    return machines


async def set_machine(conn: AsyncConnection, row_id: int, **values: Any) -> None:
    await conn.execute(rollout_machines.update().where(rollout_machines.c.id == row_id)
                       .values(**values))


async def settle_job_part(conn: AsyncConnection, job_id: int, agent_id: str, state: str,
                          detail: str, now: dt.datetime) -> int | None:
    """The rollout machine a job part was sent for reaches `state`; its rollout's id, or
    None if no machine was still waiting on it (not a rollout's job, or settled already)."""
    result = await conn.execute(
        rollout_machines.update()
        .where(rollout_machines.c.job_id == job_id, rollout_machines.c.agent_id == agent_id,
               rollout_machines.c.state == "sent")
        .values(state=state, finished_at=now, detail=detail)
        .returning(rollout_machines.c.rollout_id))
    found = result.scalar()
    return None if found is None else int(found)


async def reset_failed(conn: AsyncConnection, rollout_id: int, now: dt.datetime) -> int:
    """Failed and timed-out machines go back to pending, to be sent again."""
    result = await conn.execute(
        rollout_machines.update()
        .where(rollout_machines.c.rollout_id == rollout_id,
               rollout_machines.c.state.in_(("failed", "timed_out")))
        .values(state="pending", job_id=None, sent_at=None, finished_at=None,
                detail=f"retried at {now:%Y-%m-%d %H:%M}Z"))
    return int(result.rowcount)


# ----------------------------------------------------------------------------- targeting
# Machines already in a rollout in these states are looked at again when their inputs
# change: the uncovered may have been renewed, the failed may have been fixed by hand, and
# a pending machine of unknown version may have reported one.
REVISITED = ("not_covered", "failed", "timed_out")


@dataclass(frozen=True, slots=True)
class TargetingCandidate:
    """A machine a rollout should (re)consider: what its coverage depends on, the products
    it last reported, and its row in the rollout if it has one (`row_*`, else None)."""

    id: str
    customer_id: int
    contract_id: int | None
    joined_contract_on: dt.date | None
    enrolled_at: dt.datetime
    products: list[dict[str, Any]] | None  # the health report's products, as stored
    row_id: int | None
    row_state: str | None
    row_wave: int | None
    row_detail: str | None

    @property
    def coverage_key(self) -> CoverageKey:
        return CoverageKey(self.id, self.customer_id, self.contract_id, self.joined_contract_on,
                           self.enrolled_at)


async def targeting_candidates(
    conn: AsyncConnection, rollout_id: int, customer_id: int | None,
    since: dt.datetime | None,
) -> list[TargetingCandidate]:
    """Machines a rollout should (re)consider, in one query: every machine not revoked and
    not yet in it (or in it in a REVISITED state, pending with an unknown version, or
    installed but changed since) whose targeting inputs changed at or after `since` (None:
    all of them). Of the health report only `products` is read: most of its bytes are
    the rest."""
    rm = rollout_machines
    query = (
        sa.select(agents.c.id, agents.c.customer_id, agents.c.contract_id,
                  agents.c.joined_contract_on, agents.c.enrolled_at,
                  agents.c.health["products"].label("products"),
                  rm.c.id.label("row_id"), rm.c.state.label("row_state"),
                  rm.c.wave.label("row_wave"), rm.c.detail.label("row_detail"))
        .select_from(agents.outerjoin(rm, sa.and_(rm.c.agent_id == agents.c.id,
                                                  rm.c.rollout_id == rollout_id)))
        .where(agents.c.revoked_at.is_(None),
               sa.or_(rm.c.id.is_(None), rm.c.state.in_(REVISITED),
                      sa.and_(rm.c.state == "pending", rm.c.from_version.is_(None)),
                      # installed, then changed again (e.g. reinstalled from old media)
                      sa.and_(rm.c.state == "succeeded",
                              agents.c.targeting_changed_at > rm.c.finished_at)))
        .order_by(agents.c.id)
    )
    if since is not None:
        query = query.where(agents.c.targeting_changed_at >= since)
    if customer_id is not None:
        query = query.where(agents.c.customer_id == customer_id)
    return typed_rows(await conn.execute(query), TargetingCandidate)


async def stored_products(conn: AsyncConnection, agent_ids: list[str]) -> dict[str, Any]:
    """The products each of these machines last reported (as stored), by agent id."""
    found: dict[str, Any] = {}
    for start in range(0, len(agent_ids), 500):
        query = sa.select(agents.c.id, agents.c.health["products"].label("products")).where(
            agents.c.id.in_(agent_ids[start:start + 500]))
        found.update((r.id, r.products) for r in await conn.execute(query))
    return found


async def mark_targeting_changed(
    conn: AsyncConnection, now: dt.datetime, *, agent_ids: list[str] | None = None,
    customer_id: int | None = None,
) -> None:
    """An input of rollout targeting changed for these machines (by id, or every machine
    of a customer: a contract or maintenance package of theirs changed): open rollouts
    look at them again on their next tick."""
    if agent_ids is None:
        await conn.execute(agents.update().where(agents.c.customer_id == customer_id)
                           .values(targeting_changed_at=now))
        return
    for start in range(0, len(agent_ids), 500):
        await conn.execute(agents.update().where(agents.c.id.in_(agent_ids[start:start + 500]))
                           .values(targeting_changed_at=now))
