"""Every refusal of the foundation, against a real coordinator: the close code and reason
the peer sees, that nothing was stored, and that other agents are served meanwhile."""

from __future__ import annotations

import asyncio
import ssl
import time

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from careline.shared import protocol as p
from careline.shared.keys import (
    JoinString,
    agent_id_for,
    generate_key,
    load_private_key,
    public_bytes,
    sign_challenge,
)
from careline.shared.tls import pinned_client_context
from tests.conftest import PYTHON, run, wait_until


def ca_context(coordinator) -> ssl.SSLContext:
    return pinned_client_context((coordinator.data / "pki" / "ca.pem").read_text())


async def open_session(coordinator, key, agent_id: str):
    """A hand-driven agent connection up to the Welcome (or the refusal)."""
    ws = await connect(coordinator.url + p.AGENT_PATH, ssl=ca_context(coordinator), compression=None)
    challenge = p.decode(await ws.recv(), p.Challenge)
    hello = p.Hello(agent_id=agent_id, agent_version="test",
                    signature=sign_challenge(key, challenge.nonce, agent_id))
    await ws.send(p.encode(hello))
    return ws, hello


async def close_of(ws) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012 - read until the close, bounded
        for _ in range(10):
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.fixture
def enrolled(sqlite_coordinator, spawn_agent):
    """One enrolled (not running) agent: its key and id."""
    agent = spawn_agent("pc1", sqlite_coordinator.join_string(), start=False)
    return agent, load_private_key(agent.state / "agent.key")


def test_unknown_agent_is_refused(sqlite_coordinator):
    key = generate_key()
    agent_id = agent_id_for(public_bytes(key))

    async def scenario():
        ws, _ = await open_session(sqlite_coordinator, key, agent_id)
        return await close_of(ws)

    code, reason = asyncio.run(scenario())
    assert code == p.CloseCode.UNAUTHENTICATED
    assert "unknown agent" in reason
    assert sqlite_coordinator.agents() == {}


def test_wrong_key_for_a_known_id_is_refused(sqlite_coordinator, enrolled):
    agent, _key = enrolled

    async def scenario():
        ws, _ = await open_session(sqlite_coordinator, generate_key(), agent.agent_id)
        return await close_of(ws)

    code, reason = asyncio.run(scenario())
    assert code == p.CloseCode.UNAUTHENTICATED
    assert "signature" in reason
    assert sqlite_coordinator.agents()[agent.agent_id]["last_seen"] is None


def test_replayed_signature_is_refused(sqlite_coordinator, enrolled):
    agent, key = enrolled

    async def scenario():
        first, hello = await open_session(sqlite_coordinator, key, agent.agent_id)
        p.decode(await first.recv(), p.Welcome)
        await first.close()
        # A captured hello sent on a new connection answers the wrong challenge.
        ws = await connect(sqlite_coordinator.url + p.AGENT_PATH,
                           ssl=ca_context(sqlite_coordinator), compression=None)
        p.decode(await ws.recv(), p.Challenge)
        await ws.send(p.encode(hello))
        return await close_of(ws)

    code, reason = asyncio.run(scenario())
    assert code == p.CloseCode.UNAUTHENTICATED
    assert "challenge" in reason


def test_revoked_agent_is_disconnected_and_refused(sqlite_coordinator, enrolled):
    agent, key = enrolled
    agent.start()
    wait_until(lambda: sqlite_coordinator.agents()[agent.agent_id]["status"] == "online")
    sqlite_coordinator.cli("agents", "revoke", agent.agent_id)
    assert agent.proc.wait(15) != 0  # the running agent stops: its identity is refused
    assert "revoked" in agent.log.read_text()
    assert agent.status()["connection"]["state"] == "refused"
    assert sqlite_coordinator.agents()[agent.agent_id]["status"] == "revoked"

    async def scenario():
        ws, _ = await open_session(sqlite_coordinator, key, agent.agent_id)
        return await close_of(ws)

    code, reason = asyncio.run(scenario())
    assert code == p.CloseCode.REVOKED
    assert "revoked" in reason
    audit = sqlite_coordinator.cli("audit")
    assert any(a["action"] == "agent.revoke" and a["actor"] == "local-admin" for a in audit)


def test_expired_token_is_refused_and_nothing_stored(sqlite_coordinator, tmp_path):
    with sqlite_coordinator.client() as client:
        client.call("customers.add", name="Late")
        join = client.call("tokens.create", customer="Late", uses=3, expires_seconds=1)["join"]
    time.sleep(1.5)
    result = run([PYTHON, "-m", "careline.agent.cli", "enroll", join, "--state", str(tmp_path / "late")],
                 check=False)
    assert result.returncode == 3  # EXIT_REFUSED
    assert "expired" in result.stderr
    assert sqlite_coordinator.agents() == {}
    assert not (tmp_path / "late" / "agent.json").exists()


def test_unknown_token_and_wrong_ca_fingerprint(sqlite_coordinator, tmp_path):
    real = JoinString.parse(sqlite_coordinator.join_string(uses=1))
    forged = JoinString(real.server_url, "cle_not-a-real-token", real.ca_fingerprint)
    result = run([PYTHON, "-m", "careline.agent.cli", "enroll", str(forged), "--state", str(tmp_path / "a")],
                 check=False)
    assert result.returncode == 3
    assert "not known" in result.stderr

    # A coordinator whose CA is not the pinned one never sees the token.
    wrong_ca = JoinString(real.server_url, real.token, "0" * 64)
    result = run([PYTHON, "-m", "careline.agent.cli", "enroll", str(wrong_ca),
                  "--state", str(tmp_path / "b")], check=False)
    assert result.returncode == 3
    assert "fingerprint" in result.stderr
    # The real token is still unused: it can enroll a machine.
    result = run([PYTHON, "-m", "careline.agent.cli", "enroll", str(real), "--state", str(tmp_path / "c")])
    assert "Enrolled as" in result.stdout
    assert len(sqlite_coordinator.agents()) == 1


@pytest.mark.parametrize(
    ("payload", "expected_code", "reason_part"),
    [
        (b"\xc1\xff garbage", p.CloseCode.PROTOCOL, "undecodable"),
        (msgspec.msgpack.encode({"t": "format_disk", "path": "/"}), p.CloseCode.PROTOCOL, "invalid message"),
        (msgspec.msgpack.encode({"t": "event", "seq": "one", "kind": "x", "at": 0}),
         p.CloseCode.PROTOCOL, "invalid message"),
        ("a text frame", p.CloseCode.PROTOCOL, "text frames"),
        # Refused by the websocket layer before it is buffered whole (issue 12).
        (b"\x00" * (p.MAX_MESSAGE_BYTES + 1), CloseCode.MESSAGE_TOO_BIG, "exceeds"),
    ],
    ids=["garbage", "unknown-type", "wrong-field-type", "text", "oversized"],
)
def test_bad_messages_close_only_that_connection(sqlite_coordinator, spawn_agent, payload,
                                                 expected_code, reason_part):
    join = sqlite_coordinator.join_string(uses=2)
    bystander = spawn_agent("bystander", join)
    victim = spawn_agent("victim", join, start=False)
    key = load_private_key(victim.state / "agent.key")
    wait_until(lambda: sqlite_coordinator.agents()[bystander.agent_id]["status"] == "online")

    async def scenario():
        ws, _ = await open_session(sqlite_coordinator, key, victim.agent_id)
        p.decode(await ws.recv(), p.Welcome)
        await ws.send(payload)
        return await close_of(ws)

    code, reason = asyncio.run(scenario())
    assert code == expected_code
    assert reason_part in reason
    with sqlite_coordinator.client() as client:
        assert client.call("agents.show", id=victim.agent_id)["recent_events"] == []
    # The coordinator still serves the other agent.
    seen = sqlite_coordinator.agents()[bystander.agent_id]["last_seen"]
    wait_until(lambda: sqlite_coordinator.agents()[bystander.agent_id]["last_seen"] != seen)
    assert sqlite_coordinator.agents()[bystander.agent_id]["status"] == "online"


def test_technician_roles_and_revocation(sqlite_coordinator):
    viewer = sqlite_coordinator.cli("technicians", "add", "vy", "--role", "viewer")["token"]
    assert sqlite_coordinator.cli("customers", "list", token=viewer) == []
    refused = sqlite_coordinator.cli("customers", "add", "X", token=viewer, check=False)
    assert refused.returncode == 1
    assert "viewer" in refused.stderr
    assert "technician role" in refused.stderr
    assert sqlite_coordinator.cli("customers", "list") == []

    tech = sqlite_coordinator.cli("technicians", "add", "tuan", "--role", "technician")["token"]
    sqlite_coordinator.cli("customers", "add", "Y", token=tech)
    refused = sqlite_coordinator.cli("technicians", "add", "z", "--role", "admin", token=tech,
                                     check=False)
    assert refused.returncode == 1
    assert "admin role" in refused.stderr

    sqlite_coordinator.cli("technicians", "revoke", "tuan")
    refused = sqlite_coordinator.cli("customers", "list", token=tech, check=False)
    assert refused.returncode == 1
    assert "unknown or revoked" in refused.stderr
    refused = sqlite_coordinator.cli("customers", "list", token="clt_bogus", check=False)
    assert refused.returncode == 1
    listed = sqlite_coordinator.cli("technicians", "list")
    assert {t["name"] for t in listed} == {"admin", "local-admin", "vy", "tuan"}
    assert all("token_hash" not in t for t in listed)


def test_init_refuses_to_overwrite(sqlite_coordinator):
    result = run([PYTHON, "-m", "careline.coordinator.cli", "init", "--data", str(sqlite_coordinator.data)],
                 check=False)
    assert result.returncode == 1
    assert "refusing to overwrite" in result.stderr
    # Tokens are stored only as hashes.
    db = (sqlite_coordinator.data / "careline.db").read_bytes()
    assert sqlite_coordinator.admin_token.encode() not in db
