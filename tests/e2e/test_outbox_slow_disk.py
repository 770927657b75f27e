"""A slow disk does not stall the agent (issue 13, item 10): while ten events are written to
an outbox whose every commit takes SLOW_COMMIT (a failing HDD's fsync), the agent's event
loop keeps answering, heartbeats and keepalive pings go out on time (the connection is never
given up as silent), and the events reach the coordinator in order, exactly once.

The agent runs in this process (the real AgentRunner, over real TLS to a real coordinator
process) so its outbox can be the slow one."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest

from careline.agent.platform import HARDWARE_ENV
from careline.agent.runner import AgentRunner
from careline.agent.state import StateDir
from tests.e2e.test_outbox_backlog import stored
from tests.test_outbox import SLOW_COMMIT, SlowDisk

INTERVAL = 1.0  # the test coordinator's heartbeat interval
EVENTS = 10


def test_slow_outbox_writes_do_not_delay_heartbeats_or_pings(
        sqlite_coordinator: Any, spawn_agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string(), start=False)
    monkeypatch.setenv(HARDWARE_ENV, json.dumps(agent.hardware))
    runner = AgentRunner(StateDir(agent.state))
    runner.outbox.close()
    runner.outbox = SlowDisk(agent.state / "outbox.db")

    async def main() -> tuple[float, list[float], list[str], float]:
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        while runner.status.state != "connected":
            assert not running.done()
            await asyncio.sleep(0.05)
        await asyncio.sleep(INTERVAL)  # let one heartbeat go out before the writes
        beats: list[float] = []
        states: list[str] = []
        worst = 0.0
        started = time.monotonic()
        writes = asyncio.gather(*(runner.emit("update_step", {"n": n}) for n in range(EVENTS)))
        last_report = runner.status.last_report_at
        while not writes.done() or time.monotonic() - started < 2.5 * INTERVAL:
            tick = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - tick - 0.01)
            states.append(runner.status.state)
            if runner.status.last_report_at != last_report:
                last_report = runner.status.last_report_at
                beats.append(time.monotonic())
        written_in = time.monotonic() - started
        await writes
        # Polls the coordinator's database, which has no event to wait on.
        while len(await asyncio.to_thread(stored, coord, agent.agent_id)) < EVENTS:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        stop.set()
        await running
        return worst, beats, states, written_in

    worst, beats, states, written_in = asyncio.run(main())
    assert written_in >= EVENTS * SLOW_COMMIT  # the disk really was slow
    # Less than one slow commit: not a single write ran on the loop (it used to be all ten).
    assert worst < 0.75 * SLOW_COMMIT, f"the agent's event loop stalled {worst:.3f}s on writes"
    assert set(states) == {"connected"}, "the agent gave the connection up during the writes"
    assert len(beats) >= 2, f"heartbeats stopped while the outbox was written: {beats}"
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert all(gap < 1.5 * INTERVAL for gap in gaps), f"heartbeats late: {gaps}"
    rows = stored(coord, agent.agent_id)
    assert [data["n"] for _, data in rows] == list(range(EVENTS))  # in order, exactly once
    assert [seq for seq, _ in rows] == sorted({seq for seq, _ in rows})
