"""The job sweeper keeps the agents that reconnected when a dispatch fails (issue 13,
item 3): their unfinished jobs go out with the next sweep, not at their next reconnect.

In-process: a real Coordinator over a real SQLite database made to fail for a while (its
job_machines table renamed away and back)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from careline.coordinator.datadir import DataDir
from careline.coordinator.server import Coordinator
from careline.coordinator.storage.db import Database
from careline.coordinator.updates import DISPATCH_SWEEP_SECONDS
from tests.conftest import CoordinatorProcess


async def test_reconnected_agents_survive_a_failed_dispatch(tmp_path: Path) -> None:
    datadir = DataDir(CoordinatorProcess(tmp_path).data)  # `careline init`, not started
    settings = datadir.settings()
    db = Database(datadir.database_url(settings))
    await db.migrate()
    coordinator = Coordinator(datadir, settings, db)
    updates = coordinator.updates
    try:
        with sqlite3.connect(datadir.sqlite_file) as conn:
            conn.execute("ALTER TABLE job_machines RENAME TO job_machines_away")
        # The agent is not connected to this coordinator: only its id is remembered.
        await updates.on_agent_connected("ag-back")
        await asyncio.sleep(DISPATCH_SWEEP_SECONDS * 1.5)  # a sweep fails meanwhile
        assert updates._reconnected == {"ag-back"}  # kept for the next sweep
        with sqlite3.connect(datadir.sqlite_file) as conn:
            conn.execute("ALTER TABLE job_machines_away RENAME TO job_machines")
        await asyncio.sleep(DISPATCH_SWEEP_SECONDS * 1.5)
        assert updates._reconnected == set()  # dispatched this time
    finally:
        await updates.close()
        await db.close()
