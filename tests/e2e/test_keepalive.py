"""Dead peers are noticed fast (issue 13, item 6): a frozen coordinator (SIGSTOP: its
sockets stay open, TCP says nothing for ~15 minutes) is given up by the agent within two
heartbeat intervals, and the agent is back once the coordinator thaws."""

from __future__ import annotations

import signal
import time

import pytest

from careline.shared.errors import AuthError
from tests.conftest import CoordinatorProcess, wait_until

INTERVAL = 1.0  # the test coordinator's heartbeat interval


def test_agent_notices_a_frozen_coordinator_within_two_intervals(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string())
    wait_until(lambda: agent.status()["connection"]["state"] == "connected")
    assert coord.proc is not None
    coord.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    try:  # (it may be retrying already: the reconnect window of one agent is a second)
        status = wait_until(lambda: (s := agent.status()["connection"])["state"] != "connected"
                            and (s.get("disconnected_at") or 0) > frozen_at and s,
                            timeout=10, interval=0.05)
    finally:
        coord.proc.send_signal(signal.SIGCONT)
    assert status["state"] in ("disconnected", "connecting")
    assert "silent" in status["last_error"]
    noticed = status["disconnected_at"] - frozen_at  # when it gave up, by its own clock
    assert noticed <= 2 * INTERVAL + 0.25, f"noticed after {noticed:.2f}s"
    wait_until(lambda: agent.status()["connection"]["state"] == "connected", timeout=30)
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")


def test_idle_technician_connection_is_closed(tmp_path):
    coord = CoordinatorProcess(tmp_path)
    settings = coord.data / "careline.toml"
    settings.write_text("".join(line for line in settings.read_text().splitlines(keepends=True)
                                if not line.startswith("admin_idle_timeout"))
                        + "admin_idle_timeout = 1.0\n")
    coord.start()
    try:
        with coord.client() as client:
            client.call("customers.list")
            time.sleep(1.5)
            with pytest.raises(AuthError, match="idle"):
                client.call("customers.list")
    finally:
        coord.stop()
