"""Dead peers are noticed fast (issue 13, item 6): a frozen coordinator (SIGSTOP: its
sockets stay open, TCP says nothing for ~15 minutes) is given up by the agent within two
heartbeat intervals, and the agent is back once the coordinator thaws."""

from __future__ import annotations

import signal
import time

from tests.conftest import wait_until

INTERVAL = 1.0  # the test coordinator's heartbeat interval


def test_agent_notices_a_frozen_coordinator_within_two_intervals(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string())
    wait_until(lambda: agent.status()["connection"]["state"] == "connected")
    assert coord.proc is not None
    coord.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    try:
        status = wait_until(lambda: (s := agent.status()["connection"])["state"] != "connected" and s,
                            timeout=10, interval=0.05)
    finally:
        coord.proc.send_signal(signal.SIGCONT)
    assert status["state"] == "disconnected"
    assert "silent" in status["last_error"]
    noticed = status["since"] - frozen_at  # when the agent changed state, by its own clock
    assert noticed <= 2 * INTERVAL + 0.25, f"noticed after {noticed:.2f}s"
    wait_until(lambda: agent.status()["connection"]["state"] == "connected", timeout=30)
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")
