"""Web console sessions (coordinator/web/sessions.py decides; this stores)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from careline.coordinator.storage.fleet import Row
from careline.coordinator.storage.schema import technicians, web_sessions


async def add(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(web_sessions.insert().values(**row))


async def get_with_technician(conn: AsyncConnection, id_hash: str) -> Row | None:
    """The session and its technician (name, role, revoked_at) in one read, or None."""
    query = (sa.select(web_sessions, technicians.c.name, technicians.c.role, technicians.c.revoked_at)
             .join(technicians, technicians.c.token_hash == web_sessions.c.token_hash, isouter=True)
             .where(web_sessions.c.id_hash == id_hash))
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def update(conn: AsyncConnection, id_hash: str, **values: Any) -> None:
    await conn.execute(web_sessions.update().where(web_sessions.c.id_hash == id_hash).values(**values))


async def delete(conn: AsyncConnection, id_hash: str) -> None:
    await conn.execute(web_sessions.delete().where(web_sessions.c.id_hash == id_hash))


async def delete_for_token(conn: AsyncConnection, token_hash: str) -> None:
    await conn.execute(web_sessions.delete().where(web_sessions.c.token_hash == token_hash))


async def prune(conn: AsyncConnection, idle_before: dt.datetime, created_before: dt.datetime) -> None:
    """Drop sessions past their idle time or lifetime."""
    await conn.execute(web_sessions.delete().where(sa.or_(
        web_sessions.c.last_seen < idle_before, web_sessions.c.created_at < created_before)))
