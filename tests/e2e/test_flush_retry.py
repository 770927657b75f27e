"""A presence/heartbeat flush that fails keeps its batch and is retried (issue 13, item 3).

The failure is a real one: a trigger in the coordinator's own database refuses every
update of `agents` until the test drops it again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from tests.conftest import wait_until

SQLITE_FAIL = ("CREATE TRIGGER careline_fail BEFORE UPDATE ON agents"
               " BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
PG_FAIL = [
    "CREATE OR REPLACE FUNCTION careline_fail() RETURNS trigger AS $$"
    " BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER careline_fail BEFORE UPDATE ON agents FOR EACH ROW EXECUTE FUNCTION careline_fail()",
]


def sql(coord: Any, database: str, statements: list[str], query: str = "") -> list[tuple[Any, ...]]:
    """Run statements (then an optional query) on the coordinator's own database."""
    if database.startswith("sqlite"):
        with sqlite3.connect(database.removeprefix("sqlite:///")) as db:
            for statement in statements:
                db.execute(statement)
            return db.execute(query).fetchall() if query else []

    import asyncpg

    async def pg() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(database)
        try:
            for statement in statements:
                await conn.execute(statement)
            return [tuple(r) for r in await conn.fetch(query)] if query else []
        finally:
            await conn.close()

    return asyncio.run(pg())


def break_agents_table(coord: Any, database: str) -> None:
    sql(coord, database, [SQLITE_FAIL] if database.startswith("sqlite") else PG_FAIL)


def mend_agents_table(coord: Any, database: str) -> None:
    drop = "DROP TRIGGER careline_fail" + ("" if database.startswith("sqlite") else " ON agents")
    sql(coord, database, [drop])


def presence(coord: Any, database: str, agent_id: str) -> tuple[Any, ...]:
    rows = sql(coord, database, [], "SELECT connected, last_connected_at FROM agents"
               f" WHERE id = '{agent_id}'")
    return (bool(rows[0][0]), rows[0][1])


def test_failed_flush_keeps_connect_and_disconnect(coordinator, database, spawn_agent):
    coord = coordinator
    agent = spawn_agent("pc", coord.join_string(), start=False)
    break_agents_table(coord, database)
    agent.start()
    wait_until(lambda: agent.status()["connection"]["state"] == "connected")
    time.sleep(2.5)  # a few flushes fail meanwhile
    assert presence(coord, database, agent.agent_id) == (False, None)
    mend_agents_table(coord, database)
    # The connect written by a retry, not lost with the batch that failed.
    wait_until(lambda: presence(coord, database, agent.agent_id)[1] is not None)
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")

    break_agents_table(coord, database)
    agent.kill()
    time.sleep(2.5)
    assert presence(coord, database, agent.agent_id)[0] is True  # not written yet
    mend_agents_table(coord, database)
    wait_until(lambda: presence(coord, database, agent.agent_id)[0] is False)
