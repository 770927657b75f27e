"""Queries for rollouts and each machine's place in one."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.storage.fleet import Row, insert_row, rows_of
from careline.coordinator.storage.schema import agents, customers, job_machines, rollout_machines, rollouts
from careline.shared.errors import NotFound


async def add_rollout(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return await insert_row(conn, rollouts, values, "rollout")


async def get_rollout(conn: AsyncConnection, rollout_id: int, lock: bool = False) -> Row:
    """A rollout; `lock` holds its row until the transaction ends, so coordinators sharing a
    PostgreSQL database never advance the same rollout at once (SQLite has one writer)."""
    query = sa.select(rollouts).where(rollouts.c.id == rollout_id)
    rows = rows_of(await conn.execute(query.with_for_update() if lock else query))
    if not rows:
        raise NotFound(f"no rollout {rollout_id}")
    return rows[0]


async def list_rollouts(conn: AsyncConnection, statuses: tuple[str, ...] | None = None) -> list[Row]:
    query = sa.select(rollouts).order_by(rollouts.c.id.desc())
    if statuses:
        query = query.where(rollouts.c.status.in_(statuses))
    return rows_of(await conn.execute(query))


async def update_rollout(conn: AsyncConnection, rollout_id: int, **values: Any) -> None:
    await conn.execute(rollouts.update().where(rollouts.c.id == rollout_id).values(**values))


async def add_machines(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert many; every row must carry the same keys (one executemany)."""
    if rows:
        await conn.execute(rollout_machines.insert(), rows)


async def machines_of(conn: AsyncConnection, rollout_id: int) -> list[Row]:
    """Every machine of a rollout with its customer, hostname, presence and its job part's
    status."""
    query = (
        sa.select(rollout_machines, agents.c.hostname, agents.c.connected, agents.c.last_seen,
                  agents.c.revoked_at, customers.c.name.label("customer"),
                  job_machines.c.status.label("job_status"))
        .select_from(
            rollout_machines.join(agents, agents.c.id == rollout_machines.c.agent_id)
            .join(customers, customers.c.id == rollout_machines.c.customer_id)
            .outerjoin(job_machines, sa.and_(job_machines.c.job_id == rollout_machines.c.job_id,
                                             job_machines.c.agent_id == rollout_machines.c.agent_id))
        )
        .where(rollout_machines.c.rollout_id == rollout_id)
        .order_by(rollout_machines.c.wave, rollout_machines.c.id)
    )
    return rows_of(await conn.execute(query))


async def set_machine(conn: AsyncConnection, row_id: int, **values: Any) -> None:
    await conn.execute(rollout_machines.update().where(rollout_machines.c.id == row_id)
                       .values(**values))


async def reset_failed(conn: AsyncConnection, rollout_id: int, now: dt.datetime) -> int:
    """Failed and timed-out machines go back to pending, to be sent again."""
    result = await conn.execute(
        rollout_machines.update()
        .where(rollout_machines.c.rollout_id == rollout_id,
               rollout_machines.c.state.in_(("failed", "timed_out")))
        .values(state="pending", job_id=None, sent_at=None, finished_at=None,
                detail=f"retried at {now:%Y-%m-%d %H:%M}Z"))
    return int(result.rowcount)
