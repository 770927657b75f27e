"""The one-second heartbeat flush (coordinator.server), in process on a real data dir and
database: a bad agent costs only its own report; a batch storage refuses is kept and
written once storage is back, never dropped."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from careline.coordinator.datadir import DataDir
from careline.coordinator.server import Coordinator
from careline.coordinator.storage import fleet as store
from careline.coordinator.storage.db import Database
from careline.shared import protocol as p
from tests.conftest import PYTHON, run
from tests.test_storage import new_agent, new_customer


@pytest.fixture
async def coordinator(tmp_path: Path, database: str) -> AsyncIterator[Coordinator]:
    data = tmp_path / "data"
    run([PYTHON, "-m", "careline.coordinator.cli", "init", "--data", str(data),
         "--database", database, "--json"])
    datadir = DataDir(data)
    db = Database(database)
    await db.migrate()
    yield Coordinator(datadir, datadir.settings(), db)
    await db.close()


def health(**problems: Any) -> p.Health:
    return p.Health(cpu_percent=1.0, memory_total=1, memory_used=1, memory_percent=1.0,
                    disks=[], boot_time=1.0, uptime=float(time.time()), os="Linux",
                    agent_version="t", products=[],
                    problems=[p.Problem(k, s) for k, s in problems.items()])


async def report(coord: Coordinator, agent_ids: list[str]) -> None:
    now = dt.datetime.now(dt.UTC)
    for agent_id in agent_ids:
        coord._heartbeats[agent_id] = (time.time(), health())
        coord.hub.presence[agent_id] = (True, now, "t")


async def seen(coord: Coordinator) -> dict[str, Any]:
    async with coord.db.connect() as conn:
        return {r.id: r.last_seen for r in await store.list_agents(conn)}


async def test_bad_agent_costs_only_its_own_report(coordinator: Coordinator, caplog) -> None:
    coord = coordinator
    cid = await new_customer(coord.db)
    agents = [await new_agent(coord.db, cid, f"pc-{i}") for i in range(9)]
    bad = agents[4]
    async with coord.db.transaction() as conn:  # a row of its own that storage chokes on
        await conn.execute(sa.text(
            "INSERT INTO conditions (agent_id, kind, subject, state) VALUES (:a, 'disk_full', '/', :s)"
        ), {"a": bad, "s": json.dumps({"not": "a state"})})
    await report(coord, agents)
    with caplog.at_level(logging.ERROR, "careline.coordinator"):
        await coord._flush_heartbeats()
    stored = await seen(coord)
    assert [a for a in agents if stored[a] is None] == [bad]
    assert f"report of agent {bad} not stored" in caplog.text
    assert coord._heartbeats == {}
    assert coord.hub.presence == {}


async def test_batch_storage_refuses_is_kept_and_written_later(coordinator: Coordinator) -> None:
    coord = coordinator
    cid = await new_customer(coord.db)
    agents = [await new_agent(coord.db, cid, f"pc-{i}") for i in range(5)]
    await report(coord, agents)
    async with coord.db.transaction() as conn:  # storage is broken for everyone
        await conn.execute(sa.text("ALTER TABLE conditions RENAME TO conditions_away"))
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the backend raises
        await coord._flush_heartbeats()
    assert set(coord._heartbeats) == set(agents)  # kept, not dropped
    await report(coord, agents[:2])  # newer reports meanwhile win
    async with coord.db.transaction() as conn:
        await conn.execute(sa.text("ALTER TABLE conditions_away RENAME TO conditions"))
    await coord._flush_heartbeats()
    stored = await seen(coord)
    assert all(stored[a] is not None for a in agents)
    assert coord._heartbeats == {}
