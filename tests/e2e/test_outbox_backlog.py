"""An agent back after a long time offline delivers its whole backlog at once: the
coordinator's acks keep it going (issue 13, item 1), not new events."""

from __future__ import annotations

import json
import sqlite3
import time

from careline.agent.outbox import Outbox
from tests.conftest import wait_until

BACKLOG = 5_000


def stored(coord, agent_id: str) -> list[tuple[int, int]]:
    """(seq, n) of the agent's stored events, in the order they were stored."""
    with sqlite3.connect(coord.data / "careline.db") as db:
        rows = db.execute(
            "SELECT seq, data FROM events WHERE agent_id = ? ORDER BY id", (agent_id,)).fetchall()
    return [(seq, json.loads(data)["n"]) for seq, data in rows]


def test_backlog_of_5000_is_stored_within_seconds_in_order_once(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string(), start=False)
    outbox = Outbox(agent.state / "outbox.db")
    seqs = [outbox.put("update_step", {"n": n}) for n in range(BACKLOG)]
    outbox.close()

    agent.start()
    wait_until(lambda: agent.status()["connection"]["state"] == "connected", timeout=20)
    started = time.monotonic()
    wait_until(lambda: len(stored(coord, agent.agent_id)) >= BACKLOG, timeout=60, interval=0.5)
    took = time.monotonic() - started
    print(f"backlog of {BACKLOG} stored in {took:.1f}s")
    rows = stored(coord, agent.agent_id)
    assert [seq for seq, _ in rows] == seqs  # in order, exactly once
    assert [n for _, n in rows] == list(range(BACKLOG))
    assert took < 30, f"backlog took {took:.1f}s"
    wait_until(lambda: agent.status()["connection"]["outbox_pending"] == 0, timeout=20)
