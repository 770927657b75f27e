"""An agent back after a long time offline delivers its whole backlog at once: the
coordinator's acks keep it going (issue 13, item 1), not new events."""

from __future__ import annotations

import json
import sqlite3
import time

from careline.agent.outbox import Outbox
from tests.conftest import wait_until

BACKLOG = 4_997  # and 3 health-trouble repeats: 5,000 events queued in all


def stored(coord, agent_id: str, kind: str = "update_step") -> list[tuple[int, dict]]:
    """(seq, data) of the agent's stored events of `kind`, in the order they were stored."""
    with sqlite3.connect(coord.data / "careline.db") as db:
        rows = db.execute("SELECT seq, data FROM events WHERE agent_id = ? AND kind = ?"
                          " ORDER BY id", (agent_id, kind)).fetchall()
    return [(seq, json.loads(data)) for seq, data in rows]


def test_backlog_of_5000_is_stored_within_seconds_in_order_once(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string(), start=False)
    outbox = Outbox(agent.state / "outbox.db")
    seqs = [outbox.put("update_step", {"n": n}) for n in range(BACKLOG)]
    for _ in range(3):  # a flapping probe while offline: folded into one, and counted
        outbox.put("disk_full", {"subject": "C:", "detail": "97%"})
    outbox.close()

    started = time.monotonic()  # from the agent's start: its own start-up is included
    agent.start()
    wait_until(lambda: len(stored(coord, agent.agent_id)) >= BACKLOG, timeout=60, interval=0.5)
    took = time.monotonic() - started
    print(f"backlog of {BACKLOG} stored in {took:.1f}s")
    rows = stored(coord, agent.agent_id)
    assert [seq for seq, _ in rows] == seqs  # in order, exactly once
    assert [data["n"] for _, data in rows] == list(range(BACKLOG))
    assert took < 20, f"backlog took {took:.1f}s"
    wait_until(lambda: agent.status()["connection"]["outbox_pending"] == 0, timeout=20)
    assert [data["repeats"] for _, data in stored(coord, agent.agent_id, "disk_full")] == [3]
    summary = stored(coord, agent.agent_id, "outbox_summary")
    assert [data for _, data in summary] == [{"folded": 2, "dropped": 0}]
