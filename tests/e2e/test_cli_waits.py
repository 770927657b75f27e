"""The technician's client waits as long as the server may take for a live command, and
says so (issue 13, item 7); before, it gave up after 30 s while a ping could take 120 s."""

from __future__ import annotations

import signal

from careline.coordinator.client import REPLY_MARGIN, reply_timeout
from tests.conftest import PYTHON, run, wait_until


def test_reply_timeout_covers_the_server_wait() -> None:
    assert reply_timeout(30.0, None) == 30.0
    assert reply_timeout(30.0, 120.0) == 120.0 + REPLY_MARGIN
    assert reply_timeout(30.0, 1.0) == 30.0  # never shorter than the default


def test_client_outwaits_a_ping_longer_than_its_default(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string())
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)  # connected, answers nothing
    try:
        from careline.coordinator.client import AdminClient, resolve_credentials

        # A client whose own default is shorter than the ping's timeout.
        with AdminClient(resolve_credentials(None, None, None, str(coord.data)), timeout=0.5) as c:
            answers = list(c.stream("agents.ping", machine=agent.agent_id, timeout=2.0, wait=2.0))
        assert answers[0]["status"] == "no answer"
        result = run([PYTHON, "-m", "careline.coordinator.cli", "restart-product", "--machine",
                      agent.agent_id, "--product", "KeToan", "--timeout", "2s",
                      "--data", str(coord.data)], check=False)
        assert "waiting up to 2s for" in result.stderr
        assert result.returncode == 1
        assert "no answer" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        agent.proc.send_signal(signal.SIGCONT)
