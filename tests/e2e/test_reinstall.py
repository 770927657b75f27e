"""Issue 16 part 1 end to end with real agents: a reinstalled PC (new state dir, same
hardware) comes back as the same machine, with its history and one contract seat, and its
old key no longer connects; a PC with a cloned disk is only proposed, and a technician can
link it. The matching rules are tested exhaustively in tests/policy/test_identity.py and
tests/test_enrollment.py."""

from __future__ import annotations

import datetime as dt

import pytest

from careline.shared.errors import CarelineError
from careline.shared.hardware import hashed
from tests.conftest import fake_hardware, wait_until


def test_reinstall_keeps_the_machine_and_clones_are_proposed(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    today = dt.datetime.now(dt.UTC).date().isoformat()
    with coord.client() as client:
        client.call("customers.add", name="Minh Anh")
        contract = client.call("contracts.add", customer="Minh Anh", signed=today, machines=2)
        join = client.call("tokens.create", customer="Minh Anh", uses=10,
                           expires_seconds=600)["join"]
        pc1 = spawn_agent("pc1", join, start=False)
        pc2 = spawn_agent("pc2", join, start=False)
        # A virus: reinstall on site, a visit for it.
        incident = client.call("incidents.open", machine=pc1.agent_id, category="virus",
                               severity="critical", note="ransomware")
        [visit] = client.call("visits.list")
        assert visit["action"] == "onsite_reinstall"

        # The contract is full: a third PC is refused, naming the contract and its limit.
        with pytest.raises(AssertionError, match=f"contract {contract['id']} allows 2 machines"):
            spawn_agent("pc3", join, start=False)

        # The technician wipes pc1 and installs a fresh agent: same hardware, new key.
        again = spawn_agent("pc1-reinstalled", join, hardware=pc1.hardware)
        assert again.agent_id == pc1.agent_id  # the same machine
        wait_until(lambda: coord.agents()[pc1.agent_id]["status"] == "online")
        machines = client.call("agents.list", customer="Minh Anh")
        assert sorted(m["id"] for m in machines) == sorted([pc1.agent_id, pc2.agent_id])
        assert [i["id"] for i in client.call("incidents.list", machine=pc1.agent_id)] == [
            incident["id"]]
        done = client.call("visits.list", completed=True)
        assert done[0]["status"] == "completed"
        assert "re-enrolled" in done[0]["note"]

        # Every hello carries the identity: a new network card in pc2 is noticed.
        pc2.hardware = {**pc2.hardware, "mac": "aa:bb:cc:00:00:02"}
        pc2.start()
        new_mac = hashed({"mac": "aa:bb:cc:00:00:02"})["mac"]
        wait_until(lambda: client.call("agents.show", id=pc2.agent_id)["hw_mac"] == new_mac)

        # The old key is gone: the old install cannot come back.
        pc1.start()
        pc1.proc.wait(20)
        assert pc1.proc.returncode != 0
        assert pc1.status()["connection"]["state"] == "refused"

        # Another customer's PC, cloned from pc2's disk image: proposed, not merged.
        client.call("customers.add", name="Hoa Mai")
        theirs = client.call("tokens.create", customer="Hoa Mai", uses=3,
                             expires_seconds=600)["join"]
        original = spawn_agent("shop1", theirs, start=False)
        clone = spawn_agent("shop2", theirs, hardware={**fake_hardware(),
                                                       "disk": original.hardware["disk"]})
        assert clone.agent_id != original.agent_id
        found = coord.cli("agents", "candidates", "--customer", "Hoa Mai")
        assert [(c["old"], c["new"], c["strength"]) for c in found] == [
            (original.agent_id, clone.agent_id, "weak")]

        # The technician knows better (same PC, new motherboard): link them.
        linked = coord.cli("agents", "replace", original.agent_id, clone.agent_id)
        assert linked["id"] == original.agent_id
        assert linked["replaced"] == clone.agent_id
        clone.kill()
        clone.start()  # it says hello with its own key id and is the original machine now
        wait_until(lambda: coord.agents()[original.agent_id]["status"] == "online")
        assert coord.agents()[clone.agent_id]["status"] == "revoked"
        with pytest.raises(CarelineError, match="revoked"):
            client.call("agents.replace", old=original.agent_id, new=clone.agent_id)
        actions = [a["action"] for a in client.call("audit.list")]
        assert actions.count("agent.relink") == 2
