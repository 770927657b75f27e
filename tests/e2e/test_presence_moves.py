"""Presence across coordinator processes (issue 13, item 4): an agent that moves from one
process to another stays online, whatever the process it left writes late."""

from __future__ import annotations

import json
import signal
import time

from tests.conftest import wait_until
from tests.e2e.test_scale_out import join_via, two_coordinators  # noqa: F401


def test_agent_moving_between_processes_stays_online(two_coordinators, spawn_agent):  # noqa: F811
    first, second_port = two_coordinators
    agent = spawn_agent("pc", join_via(first, first.port, "Move Co"))
    wait_until(lambda: first.agents()[agent.agent_id]["status"] == "online")
    # The agent's old connection goes silent (the process is frozen, its socket stays
    # open): the first process notices only at its silent sweep, 3 intervals later, and
    # writes "disconnected" after the agent is already back through the second process.
    frozen = agent.proc
    assert frozen is not None
    frozen.send_signal(signal.SIGSTOP)
    try:
        second_url = f"wss://127.0.0.1:{second_port}"
        config = json.loads((agent.state / "agent.json").read_text())
        config["server_url"] = second_url
        (agent.state / "agent.json").write_text(json.dumps(config))
        agent.start()
        wait_until(lambda: agent.status()["connection"]["coordinator"] == second_url
                   and agent.status()["connection"]["state"] == "connected")
        seen = []
        deadline = time.monotonic() + 6  # past the first process's sweep and its flush
        while time.monotonic() < deadline:
            seen.append(first.agents()[agent.agent_id]["status"])
            time.sleep(0.3)
        assert set(seen) == {"online"}, seen
    finally:
        frozen.kill()
        frozen.wait(10)
