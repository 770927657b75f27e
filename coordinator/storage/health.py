"""Queries for the machines' health history (issue 15)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.storage.fleet import Row, rows_of
from careline.coordinator.storage.schema import health_samples


async def store_samples(conn: AsyncConnection,
                        samples: Sequence[tuple[str, dt.datetime, Mapping[str, Any]]]) -> None:
    """One executemany for a batch of (agent_id, at, sample) (see health_history.sample_of)."""
    if samples:
        await conn.execute(health_samples.insert(), [
            {"agent_id": agent_id, "at": at, **sample} for agent_id, at, sample in samples])


async def list_samples(conn: AsyncConnection, agent_id: str, since: dt.datetime,
                       limit: int = 3000) -> list[Row]:
    """One agent's samples taken at or after `since`, oldest first."""
    cols = [c for c in health_samples.c if c.name not in ("id", "agent_id")]
    newest = (health_samples.select().with_only_columns(*cols)
              .where(health_samples.c.agent_id == agent_id, health_samples.c.at >= since)
              .order_by(health_samples.c.at.desc()).limit(limit))
    rows = rows_of(await conn.execute(newest))
    rows.reverse()
    return rows


async def prune_samples(conn: AsyncConnection, older_than: dt.datetime) -> int:
    """Retention: samples taken before `older_than` go. Returns how many."""
    result = await conn.execute(health_samples.delete().where(health_samples.c.at < older_than))
    return int(result.rowcount or 0)
