"""A coordinator process frozen inside a transaction (SIGSTOP, a paused VM) does not hold
its PostgreSQL row locks for good: the server ends the session once it has been idle in the
transaction for storage.db.IDLE_IN_TRANSACTION_TIMEOUT, and the other processes' writes go
through (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from careline.coordinator.storage.db import IDLE_IN_TRANSACTION_TIMEOUT, Database


async def test_every_session_carries_the_timeout(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        async with db.connect() as conn:
            shown = (await conn.execute(sa.text("SHOW idle_in_transaction_session_timeout")))
            assert shown.scalar_one() == f"{int(IDLE_IN_TRANSACTION_TIMEOUT)}s"
    finally:
        await db.engine.dispose()


async def test_a_frozen_transaction_releases_its_row_locks(pg_url: str) -> None:
    frozen, other = Database(pg_url, idle_in_transaction_timeout=1.0), Database(pg_url)
    try:
        async with other.transaction() as conn:
            await conn.execute(sa.text("CREATE TABLE presence (id int PRIMARY KEY, holder text)"))
            await conn.execute(sa.text("INSERT INTO presence VALUES (1, 'nobody')"))
        locked = asyncio.Event()

        async def freeze_holding_the_row() -> None:
            async with frozen.transaction() as conn:
                await conn.execute(sa.text("UPDATE presence SET holder = 'frozen' WHERE id = 1"))
                locked.set()
                await asyncio.sleep(4)  # stopped: idle in its transaction, the row locked

        holder = asyncio.create_task(freeze_holding_the_row())
        await locked.wait()
        started = time.monotonic()
        async with other.transaction() as conn:  # the process the agent went to
            await conn.execute(sa.text("UPDATE presence SET holder = 'alive' WHERE id = 1"))
        waited = time.monotonic() - started
        assert 0.5 < waited < 3.5, waited  # blocked until the server ended the frozen session
        with pytest.raises(DBAPIError):
            await holder  # when it runs again, its transaction is gone, not half-applied
        async with other.connect() as conn:
            holder_now = await conn.execute(sa.text("SELECT holder FROM presence WHERE id = 1"))
            assert holder_now.scalar_one() == "alive"
    finally:
        await frozen.engine.dispose()
        await other.engine.dispose()
