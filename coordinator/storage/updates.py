"""Queries for releases and update jobs (issue 6).

A job is what a technician (or an incident decision) asked for; each machine's part of it is
a `job_machines` row with a status that the agent's durable events move forward, and a
`job_steps` history. Each function takes an open connection, so callers decide what shares
one transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.storage.fleet import Row, insert_row, rows_of, typed_first, typed_rows
from careline.coordinator.storage.schema import agents, job_machines, job_steps, jobs, releases
from careline.shared.errors import NotFound

# A machine's part of a job is finished in these states.
TERMINAL = frozenset({
    "installed", "rolled_back", "refused", "failed", "verified", "mismatch", "cancelled",
})
# Finished update parts whose version did not end up installed (cancelled: not tried).
DID_NOT_INSTALL = frozenset({"rolled_back", "refused", "failed"})


# ----------------------------------------------------------------------------- releases
async def add_release(conn: AsyncConnection, **values: Any) -> int:
    return await insert_row(
        conn, releases, values, f"release {values['product']} {values['version']}"
    )


@dataclass(frozen=True, slots=True)
class Release:
    """A published release: its package is the TUF target `target` (sha256, length)."""

    id: int
    product: str
    version: str
    kind: str  # regulation, bugfix, feature
    regulation_ref: str | None  # the decree or circular a regulation update follows
    effective: dt.date | None  # when that regulation takes effect
    notes: str | None
    target: str
    sha256: str
    length: int
    published_by: str
    published_at: dt.datetime


async def list_releases(conn: AsyncConnection, product: str | None = None) -> list[Release]:
    query = sa.select(releases).order_by(releases.c.product, releases.c.id)
    if product:
        query = query.where(releases.c.product == product)
    return typed_rows(await conn.execute(query), Release)


async def find_releases(
    conn: AsyncConnection, product: str | None, version: str | None
) -> list[Release]:
    query = sa.select(releases).order_by(releases.c.id)
    if product:
        query = query.where(releases.c.product == product)
    if version:
        query = query.where(releases.c.version == version)
    return typed_rows(await conn.execute(query), Release)


async def versions_that_failed(conn: AsyncConnection, agent_id: str, product: str) -> set[str]:
    """Versions of `product` whose last finished update on this machine did not install
    (rolled back, failed, refused): pushing one again would most likely fail the same way."""
    query = (
        sa.select(job_machines.c.version, job_machines.c.outcome)
        .join(jobs, jobs.c.id == job_machines.c.job_id)
        .where(job_machines.c.agent_id == agent_id, job_machines.c.product == product,
               jobs.c.kind == "update", job_machines.c.finished_at.is_not(None))
        .order_by(job_machines.c.finished_at, job_machines.c.id)
    )
    last = {row.version: row.outcome for row in await conn.execute(query)}
    return {version for version, outcome in last.items() if outcome in DID_NOT_INSTALL}


# ----------------------------------------------------------------------------- versions
async def set_product_version(
    conn: AsyncConnection, agent_id: str, product: str, version: str, now: dt.datetime,
) -> None:
    """The machine runs `product` at `version` now, by a job result it just reported: the
    coordinator's view follows at once, in the caller's transaction (the event's), and
    rollouts re-target the machine (targeting_changed_at)."""
    row = (await conn.execute(sa.select(agents.c.health).where(agents.c.id == agent_id))).first()
    if row is None:
        return
    health = dict(row.health or {})
    products = [dict(p) for p in health.get("products", [])]
    for reported in products:
        if reported.get("name") == product:
            reported["version"] = version
            break
    else:
        products.append({"name": product, "version": version, "running": False, "pid": None})
    health["products"] = products
    await conn.execute(agents.update().where(agents.c.id == agent_id).values(
        health=health, versions_at=now, targeting_changed_at=now))


# ----------------------------------------------------------------------------- jobs
async def insert_job(
    conn: AsyncConnection, *, kind: str, product: str | None, version: str | None,
    delivery: str, created_by: str, reason: str | None, now: dt.datetime,
    stop_product: bool = False,
) -> int:
    return await insert_row(conn, jobs, {
        "kind": kind, "product": product, "version": version, "delivery": delivery,
        "stop_product": stop_product,
        "created_by": created_by, "reason": reason, "created_at": now,
    }, "job")


async def insert_job_machine(
    conn: AsyncConnection, *, job_id: int, agent_id: str, product: str | None,
    version: str | None, status: str, now: dt.datetime,
) -> str:
    """A machine's part of job `job_id`; returns its ref (what the agent calls the job)."""
    ref = f"j{job_id}-{agent_id[:16]}"
    jm_id = await insert_row(conn, job_machines, {
        "job_id": job_id, "agent_id": agent_id, "ref": ref, "product": product,
        "version": version, "status": status, "created_at": now, "updated_at": now,
    }, f"job {job_id} for {agent_id}")
    await add_step(conn, jm_id, status, now)
    return ref


async def add_step(
    conn: AsyncConnection, job_machine_id: int, step: str, now: dt.datetime,
    detail: str | None = None,
) -> None:
    await conn.execute(job_steps.insert().values(
        job_machine_id=job_machine_id, step=step, at=now, detail=detail,
    ))


async def add_steps(conn: AsyncConnection,
                    steps: Sequence[tuple[int, str, dt.datetime, str | None]]) -> None:
    """Many parts' (job part id, step, at, detail) in one statement."""
    if steps:
        await conn.execute(job_steps.insert(), [
            {"job_machine_id": part, "step": step, "at": at, "detail": detail}
            for part, step, at, detail in steps])


async def set_progress(conn: AsyncConnection,
                       moves: Sequence[tuple[int, str, str | None]], now: dt.datetime) -> None:
    """Move unfinished parts on to a non-terminal status, (part id, status, detail) each,
    in one statement (a finished part stays as it is)."""
    if not moves:
        return
    await conn.execute(
        job_machines.update()
        .where(job_machines.c.id == sa.bindparam("part"), job_machines.c.finished_at.is_(None))
        .values(status=sa.bindparam("new_status"),
                detail=sa.func.coalesce(sa.bindparam("new_detail"), job_machines.c.detail),
                updated_at=now),
        [{"part": part, "new_status": status, "new_detail": detail}
         for part, status, detail in moves])


@dataclass(frozen=True, slots=True)
class JobPart:
    """One machine's part of a job (a `job_machines` row) with what its job says of it."""

    id: int
    job_id: int
    agent_id: str
    ref: str  # what the agent calls the job
    product: str | None
    version: str | None
    status: str
    outcome: str | None
    detail: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    kind: str  # the job's: update, reinstall, verify
    delivery: str  # network or media
    stop_product: bool


def _parts() -> sa.Select[Any]:
    return (sa.select(job_machines, jobs.c.kind, jobs.c.delivery, jobs.c.stop_product)
            .join(jobs, jobs.c.id == job_machines.c.job_id))


async def job_machines_by_ref(conn: AsyncConnection, refs: Collection[str]) -> dict[str, JobPart]:
    """Job parts by their refs, in one query (a batch of agents' events names many)."""
    if not refs:
        return {}
    query = _parts().where(job_machines.c.ref.in_(sorted(refs)))
    return {part.ref: part for part in typed_rows(await conn.execute(query), JobPart)}


async def get_job_machine(conn: AsyncConnection, ref: str) -> JobPart | None:
    return await typed_first(conn, _parts().where(job_machines.c.ref == ref), JobPart)


async def open_job_machines(
    conn: AsyncConnection, *, agent_ids: Collection[str] | None = None,
    job_id: int | None = None, statuses: Sequence[str] | None = None,
) -> list[JobPart]:
    """Unfinished machine parts of network jobs, oldest first."""
    query = (
        _parts()
        .where(job_machines.c.finished_at.is_(None), jobs.c.delivery == "network")
        .order_by(job_machines.c.id)
    )
    if agent_ids is not None:
        query = query.where(job_machines.c.agent_id.in_(list(agent_ids)))
    if job_id is not None:
        query = query.where(job_machines.c.job_id == job_id)
    if statuses is not None:
        query = query.where(job_machines.c.status.in_(list(statuses)))
    return typed_rows(await conn.execute(query), JobPart)


async def set_status(
    conn: AsyncConnection, job_machine: JobPart, status: str, now: dt.datetime,
    detail: str | None = None, outcome: str | None = None,
) -> bool:
    """Move a machine's part on; False (and nothing written) once it is finished."""
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if detail is not None:
        values["detail"] = detail
    if status in TERMINAL:
        values.update(finished_at=now, outcome=outcome or status)
    result = await conn.execute(
        job_machines.update()
        .where(job_machines.c.id == job_machine.id, job_machines.c.finished_at.is_(None))
        .values(**values)
    )
    if not result.rowcount:
        return False
    await add_step(conn, job_machine.id, status, now, detail)
    return True


async def list_jobs(conn: AsyncConnection, open_only: bool = False, limit: int = 200) -> list[Row]:
    counts = (
        sa.select(
            job_machines.c.job_id,
            sa.func.count().label("machines"),
            sa.func.count(job_machines.c.finished_at).label("finished"),
            sa.func.sum(sa.case((job_machines.c.status == "installed", 1), else_=0))
            .label("installed"),
        )
        .group_by(job_machines.c.job_id)
        .subquery()
    )
    query = (
        sa.select(jobs, counts.c.machines, counts.c.finished, counts.c.installed)
        .join(counts, counts.c.job_id == jobs.c.id, isouter=True)
        .order_by(jobs.c.id.desc()).limit(limit)
    )
    if open_only:
        query = query.where(counts.c.finished < counts.c.machines)
    rows = rows_of(await conn.execute(query))
    for row in rows:
        row["machines"] = int(row["machines"] or 0)
        row["finished"] = int(row["finished"] or 0)
        row["installed"] = int(row["installed"] or 0)
        row["open"] = row["finished"] < row["machines"]
    return rows


async def get_job(conn: AsyncConnection, job_id: int) -> Row:
    rows = rows_of(await conn.execute(sa.select(jobs).where(jobs.c.id == job_id)))
    if not rows:
        raise NotFound(f"no job {job_id}")
    job = rows[0]
    machines = rows_of(await conn.execute(
        sa.select(job_machines, agents.c.hostname)
        .join(agents, agents.c.id == job_machines.c.agent_id)
        .where(job_machines.c.job_id == job_id).order_by(job_machines.c.id)
    ))
    steps = rows_of(await conn.execute(
        sa.select(job_steps).where(job_steps.c.job_machine_id.in_([m["id"] for m in machines]))
        .order_by(job_steps.c.id)
    )) if machines else []
    by_machine: dict[int, list[Row]] = {}
    for step in steps:
        by_machine.setdefault(step["job_machine_id"], []).append(
            {"step": step["step"], "at": step["at"], "detail": step["detail"]}
        )
    for machine in machines:
        machine["steps"] = by_machine.get(machine["id"], [])
    job["machines"] = machines
    job["open"] = any(m["finished_at"] is None for m in machines)
    return job
