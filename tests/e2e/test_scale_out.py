"""Scale-out: two coordinator processes on one PostgreSQL database serve one fleet."""

from __future__ import annotations

import subprocess

from tests.conftest import PYTHON, CoordinatorProcess, free_port, wait_for_port, wait_until


def test_two_coordinators_share_one_postgresql(tmp_path, pg_url, spawn_agent):
    first = CoordinatorProcess(tmp_path, pg_url)
    second_port = free_port()
    # Both start at once: their migrations must not trip over each other.
    first.start()
    second = subprocess.Popen(
        [PYTHON, "-m", "coordinator.cli", "serve", "--data", str(first.data),
         "--listen", f"127.0.0.1:{second_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(second_port, second)
        first.cli("customers", "add", "Shared Co")
        join_first = first.join_string("Shared Co", uses=1)
        with first.client() as client:
            token = client.call("tokens.create", customer="Shared Co", uses=1,
                                expires_seconds=600)["join"]
        join_second = token.replace(f":{first.port}/", f":{second_port}/")
        a = spawn_agent("a", join_first)
        b = spawn_agent("b", join_second)
        # Each process holds one agent's connection; either one shows both online.
        wait_until(lambda: {x["status"] for x in first.agents().values()} == {"online"}
                   and len(first.agents()) == 2)
        via_second = first.cli("agents", "list", "--server", f"wss://127.0.0.1:{second_port}",
                               "--ca", str(first.data / "pki" / "ca.pem"))
        assert {r["id"]: r["status"] for r in via_second} == {a.agent_id: "online",
                                                              b.agent_id: "online"}
        b.kill()
        wait_until(lambda: first.agents()[b.agent_id]["status"] == "offline")
        assert first.agents()[a.agent_id]["status"] == "online"

        # Revoked through the first process, the agent held by the second leaves it too,
        # and cannot come back through either.
        b.start()
        wait_until(lambda: first.agents()[b.agent_id]["status"] == "online")
        first.cli("agents", "revoke", b.agent_id)
        assert b.proc.wait(15) != 0
        assert "revoked" in b.proc.stderr.read()
        assert b.status()["connection"]["state"] == "refused"
        assert first.agents()[a.agent_id]["status"] == "online"
    finally:
        second.terminate()
        second.wait(10)
        first.stop()
