"""Scale-out: two coordinator processes on one PostgreSQL database serve one fleet."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import PYTHON, CoordinatorProcess, free_port, wait_for_port, wait_until
from tests.e2e.test_rollouts import installed_product
from tests.e2e.test_updates import job_done, machine


@pytest.fixture
def two_coordinators(tmp_path, pg_url) -> Iterator[tuple[CoordinatorProcess, int]]:
    """The first process (driven by the tests' CLI) and the port of a second one."""
    first = CoordinatorProcess(tmp_path, pg_url)
    second_port = free_port()
    # Both start at once: their migrations must not trip over each other.
    first.start()
    second = subprocess.Popen(
        [PYTHON, "-m", "careline.coordinator.cli", "serve", "--data", str(first.data),
         "--listen", f"127.0.0.1:{second_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(second_port, second)
        yield first, second_port
    finally:
        second.terminate()
        second.wait(10)
        first.stop()


def join_via(first: CoordinatorProcess, port: int, customer: str) -> str:
    """A join string whose agents connect to the coordinator process on `port`."""
    with first.client() as client:
        if not any(c["name"] == customer for c in client.call("customers.list")):
            client.call("customers.add", name=customer)
        join = client.call("tokens.create", customer=customer, uses=1,
                           expires_seconds=600)["join"]
    return str(join).replace(f":{first.port}/", f":{port}/")


def test_two_coordinators_share_one_postgresql(two_coordinators, spawn_agent):
    first, second_port = two_coordinators
    a = spawn_agent("a", join_via(first, first.port, "Shared Co"))
    b = spawn_agent("b", join_via(first, second_port, "Shared Co"))
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
    assert "revoked" in b.log.read_text()
    assert b.status()["connection"]["state"] == "refused"
    assert first.agents()[a.agent_id]["status"] == "online"


def test_commands_and_jobs_reach_agents_held_by_the_other_process(
    two_coordinators, spawn_agent, tmp_path
):
    first, second_port = two_coordinators
    product = tmp_path / "Luong"
    product.mkdir()
    # A log big enough that the diagnostics answer needs many NOTIFY pieces.
    (product / "luong.log").write_text("".join(f"line {i} " + "x" * 80 + "\n" for i in range(3000)))
    here = spawn_agent("here", join_via(first, first.port, "Relay Co"))
    acct = installed_product(tmp_path / "acct", "1.0.0")
    there = spawn_agent("there", join_via(first, second_port, "Relay Co"),
                        "--product", f"Luong={product}", "--product-log", "Luong=luong.log",
                        "--product", f"acct={acct}", "--product-data", "acct=Data")
    wait_until(lambda: len(first.agents()) == 2
               and {x["status"] for x in first.agents().values()} == {"online"})

    answers: dict[str, Any] = {
        a["machine"]: a for a in first.cli("agents", "ping", "--all", "--timeout", "5s")}
    assert answers[here.agent_id]["status"] == "ok"
    assert answers[there.agent_id]["status"] == "ok"
    assert 0 < answers[there.agent_id]["rtt_ms"] < 5000

    result = first.cli("diagnose", "--machine", there.agent_id, "--lines", "2000")
    logs = result["bundle"]["logs"]["Luong"]
    assert logs[-1].startswith("line 2999 ")
    assert len(logs) >= 1000
    assert first.cli("diagnostics", "show", str(result["id"]))["bundle"]["logs"]["Luong"] == logs

    # A job made through the first process is sent by the second, which holds the agent.
    job = first.cli("push", "verify", "--machine", there.agent_id, "--product", "acct")
    assert machine(job_done(first, job["id"]), there.agent_id)["status"] == "verified"

    there.kill()
    wait_until(lambda: first.agents()[there.agent_id]["status"] == "offline")
    gone = first.cli("agents", "ping", "--machine", there.agent_id, "--timeout", "3s")
    assert [a["status"] for a in gone if "machine" in a] == ["offline"]
