"""Issue 16 part 2 end to end: a PC shut down cleanly is "off" and opens no incident, one
that vanished does; a technician pauses an incident's clock while it waits on the customer.

Business-time counting itself is simulated over months in tests/policy/test_offline.py;
here the policy counts on the wall clock so the test does not depend on the time of day.
"""

from __future__ import annotations

import time

import pytest

from careline.shared.errors import CarelineError
from tests.conftest import CoordinatorProcess, wait_until


def test_clean_stop_is_off_kill_is_offline_and_waits_pause_the_clock(tmp_path, spawn_agent):
    policy = tmp_path / "vendor-policy.toml"
    # 6 seconds: well over a heartbeat and a flush, so only the agent that vanished fails.
    policy.write_text('[machine]\noffline_incident_after_minutes = 0.1\n'
                      'offline_counts = "wall_clock"\n'
                      '[alerts.agent_offline]\nopen_after = 1\nclose_after = 1\n')
    coord = CoordinatorProcess(tmp_path).start("--policy", str(policy))
    try:
        join = coord.join_string("Minh Anh", uses=2)
        shut = spawn_agent("shut", join)
        crashed = spawn_agent("crashed", join)
        wait_until(lambda: all(coord.agents()[a.agent_id]["status"] == "online"
                               for a in (shut, crashed)))
        shut.stop()  # SIGTERM, as an OS shutdown does: the agent says goodbye
        crashed.kill()  # power cut: no goodbye
        wait_until(lambda: coord.agents()[shut.agent_id]["status"] == "off")
        incident = wait_until(lambda: coord.cli("incidents", "list", "--open", "--machine",
                                                crashed.agent_id), timeout=30)[0]
        assert incident["kind"] == "agent_offline"
        time.sleep(1.5)  # more sweeps
        client = coord.client().__enter__()
        assert client.call("incidents.list", machine=shut.agent_id) == []
        assert coord.agents()[crashed.agent_id]["status"] == "offline"

        # The customer's own closures are recorded and listed.
        closures = coord.cli("customers", "closed", "Minh Anh", "--from", "2027-02-01",
                             "--to", "2027-02-13", "--note", "Tet")
        assert [(c["first_day"], c["last_day"], c["note"]) for c in closures] == [
            ("2027-02-01", "2027-02-13", "Tet")]
        with pytest.raises(CarelineError, match="--to must not be before --from"):
            client.call("customers.closed", customer="Minh Anh", first_day="2027-02-13",
                        last_day="2027-02-01")

        # Waiting on the customer holds the clock; resuming records the paused span.
        number = str(incident["id"])
        waiting = coord.cli("incidents", "wait", number, "--on", "customer", "--note",
                            "office closed for a funeral")
        assert waiting["waiting_on"] == "customer"
        explained = client.call("incidents.explain", id=incident["id"])
        assert explained["waiting_on"] == "customer"
        assert any("Clock paused since" in r for r in explained["reasons"])
        with pytest.raises(CarelineError, match="already waits on customer"):
            client.call("incidents.wait", id=incident["id"])
        resumed = coord.cli("incidents", "resume", number)
        assert resumed["waiting_on"] is None
        explained = coord.cli("incidents", "explain", number)
        [span] = explained["paused"]
        assert span["on_whom"] == "customer"
        assert span["ended_at"] is not None
        assert span["note"] == "office closed for a funeral"
        assert any(r.startswith("Paused ") and "funeral" in r for r in explained["reasons"])
        with pytest.raises(CarelineError, match="is not waiting"):
            client.call("incidents.resume", id=incident["id"])
        actions = [a["action"] for a in client.call("audit.list")]
        assert {"incident.wait", "incident.resume", "customer.closed"} <= set(actions)

        shut.start()  # switched on again the next morning: online, no longer off
        wait_until(lambda: coord.agents()[shut.agent_id]["status"] == "online")
        client.__exit__(None, None, None)
    finally:
        coord.stop()
