"""Registration is all or nothing (issue 13, item 5): a connection that dies while it is
being registered (here: while the coordinator waits for the previous connection of the
same agent to close) is forgotten, not left behind as a live agent."""

from __future__ import annotations

import asyncio
import signal
import sqlite3

from websockets.asyncio.client import connect

from careline.shared import protocol as p
from careline.shared.keys import load_private_key, sign_challenge
from careline.shared.tls import pinned_client_context
from tests.conftest import wait_until


def connected_column(coord, agent_id: str) -> bool:
    with sqlite3.connect(coord.data / "careline.db") as db:
        return bool(db.execute("SELECT connected FROM agents WHERE id = ?", (agent_id,)).fetchone()[0])


def test_link_that_fails_while_registering_is_forgotten(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    agent = spawn_agent("pc", coord.join_string())
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")
    assert agent.proc is not None
    # The running agent freezes: its connection stays open and will not answer a close.
    agent.proc.send_signal(signal.SIGSTOP)
    key = load_private_key(agent.state / "agent.key")

    async def second_connection_that_dies() -> None:
        ssl = pinned_client_context((agent.state / "ca.pem").read_text())
        async with connect(coord.url + p.AGENT_PATH, ssl=ssl, ping_interval=None) as ws:
            challenge = p.decode(await ws.recv(), p.Challenge)
            await ws.send(p.encode(p.Hello(
                agent_id=agent.agent_id, agent_version="x",
                signature=sign_challenge(key, challenge.nonce, agent.agent_id))))
            await asyncio.sleep(0.5)  # the coordinator is closing the frozen connection
            ws.transport.abort()  # gone before the Welcome

    try:
        asyncio.run(second_connection_that_dies())
        # Once the frozen connection's close times out, the Welcome cannot be sent; the
        # half-registered link must go, and the agent be recorded as disconnected.
        wait_until(lambda: not connected_column(coord, agent.agent_id), timeout=30)
        assert coord.agents()[agent.agent_id]["status"] == "offline"
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online", timeout=30)
