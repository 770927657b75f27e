"""Nothing reported is lost: the outbox survives kill -9 and coordinator outages, events
are stored once, and a power loss seen at agent start opens an incident."""

from __future__ import annotations

import json

import psutil

from careline.agent.outbox import Outbox
from tests.conftest import wait_until


def events_of(coordinator, agent_id: str) -> list[dict]:
    with coordinator.client() as client:
        return client.call("agents.show", id=agent_id)["recent_events"]


def test_outbox_survives_kill_and_outage(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string(), start=False)
    coord.kill()  # the coordinator is down while the agent has things to say
    outbox = Outbox(agent.state / "outbox.db")
    # A kind the coordinator stores (unknown kinds are acknowledged and dropped).
    seqs = [outbox.put("update_step", {"n": n}) for n in range(12)]
    outbox.close()
    agent.start()
    wait_until(lambda: agent.status()["connection"]["state"] == "disconnected")
    agent.kill()
    assert len(Outbox(agent.state / "outbox.db")) == 12

    coord.start()
    agent.start()
    wait_until(lambda: len(events_of(coord, agent.agent_id)) == 12, timeout=60)
    stored = events_of(coord, agent.agent_id)
    assert sorted(e["seq"] for e in stored) == seqs
    assert sorted(e["data"]["n"] for e in stored) == list(range(12))
    wait_until(lambda: agent.status()["connection"]["outbox_pending"] == 0)
    # A restart re-sends nothing already acknowledged; duplicates would be stored once anyway.
    agent.kill()
    agent.start()
    wait_until(lambda: agent.status()["connection"]["state"] == "connected")
    assert len(events_of(coord, agent.agent_id)) == 12


def test_power_loss_opens_incident(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string(), start=False)
    # The previous run recorded another boot and never stopped cleanly: power was cut.
    previous_boot = psutil.boot_time() - 3600
    (agent.state / "runtime.json").write_text(
        json.dumps({"boot_time": previous_boot, "clean_stop": False}))
    agent.start()
    incidents = wait_until(lambda: coord.cli("incidents", "list", "--machine", agent.agent_id))
    assert [(i["kind"], i["category"]) for i in incidents] == [("unclean_shutdown", "power")]
    kinds = [e["kind"] for e in events_of(coord, agent.agent_id)]
    assert kinds == ["unclean_shutdown"]

    # A clean stop and start on the same boot is not a power loss.
    agent.stop()
    assert json.loads((agent.state / "runtime.json").read_text())["clean_stop"] is True
    agent.start()
    wait_until(lambda: agent.status()["connection"]["state"] == "connected")
    assert len(coord.cli("incidents", "list", "--machine", agent.agent_id)) == 1
