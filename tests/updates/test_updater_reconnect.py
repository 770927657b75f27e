"""An install job interrupted by a lost connection starts again when the coordinator re-sends
it on the next connection, whether or not the old attempt has finished unwinding.

Regression: a job waiting for a metadata reply on a connection that died stayed "active" for
the 30 s fetch timeout, so the command re-sent on the new connection was dropped, and nothing
re-sent it after: the machine's update hung until the rollout timed it out.
"""

from __future__ import annotations

import asyncio
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from careline.agent.runner import Link
from careline.agent.state import AgentConfig, ProductConfig, StateDir
from careline.agent.updater import Updater, pin_root, store_enrollment_trust
from careline.shared import protocol as p
from careline.shared.instruction import Instruction, sign_instruction
from careline.shared.keys import public_bytes
from careline.shared.session import AgentSession, CommandReceived

JOB = "job-1"


class RecordingSocket:
    """Stands in for the websocket library's connection: records what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(p.decode(data, p.AgentToServer))

    def fetches(self) -> list[str]:
        return [m.name for m in self.sent if isinstance(m, p.FetchMetadata)]


def connection(ws: RecordingSocket) -> Link:
    """A welcomed session over the recording socket, as the runner hands the updater."""
    session = AgentSession("m1", "1", lambda nonce: b"sig", 0.0)
    session.receive(p.encode(p.Challenge(nonce=b"n", server_time=0.0)), 0.0)
    session.receive(p.encode(p.Welcome(heartbeat_interval=30.0, server_time=0.0)), 0.0)
    session.data_to_send()
    return Link(ws, session)  # type: ignore[arg-type]


async def command_on(updater: Updater, link: Link, command: p.Command) -> None:
    """The coordinator sends the command on this connection; the runner hands it over."""
    [received] = link.session.receive(p.encode(command), 0.0)
    assert isinstance(received, CommandReceived)
    updater.connected(link)
    await updater.on_command(link, received.command)


def make_updater(tmp_path: Path) -> tuple[Updater, p.Command]:
    """An enrolled agent state (no TUF root yet but a pin, so a job begins by fetching root v1)."""
    state = StateDir(tmp_path / "agent")
    state.path.mkdir()
    config = AgentConfig(agent_id="m1", customer_id=1, server_url="wss://127.0.0.1:1",
                         products=[ProductConfig(name="acct", install_dir=str(tmp_path / "acct"))])
    state.save_config(config)
    key = Ed25519PrivateKey.generate()
    store_enrollment_trust(state, b"", public_bytes(key))
    pin_root(state, "ab" * 32)
    now = datetime.now(UTC)
    instruction = Instruction(
        job_id=JOB, machine_id="m1", product="acct", version="1.1.0",
        target="acct/acct-1.1.0.clpkg", sha256="0" * 64, length=10, action="install",
        stop_product=False, issued_at=now, expires_at=now + timedelta(hours=1))
    command = p.Command(id=1, action=p.InstallPackage(
        job=JOB, instruction=sign_instruction(key, instruction)))
    events: list[tuple[str, Any]] = []
    runner = types.SimpleNamespace(state=state, config=config,
                                   emit=lambda kind, data=None: events.append((kind, data)))
    return Updater(runner), command  # type: ignore[arg-type]


async def stop(updater: Updater) -> None:
    """Cancel the updater's jobs as the agent does when it stops, and let them end."""
    tasks = list(updater._tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not updater._tasks  # a cancelled job is not started again


async def eventually(predicate: Any, within: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("unwound_first", [False, True],
                         ids=["resent-while-unwinding", "resent-after-unwinding"])
async def test_job_restarts_on_the_new_connection(tmp_path: Path, unwound_first: bool) -> None:
    updater, command = make_updater(tmp_path)
    old, new = RecordingSocket(), RecordingSocket()
    await command_on(updater, connection(old), command)
    await eventually(lambda: old.fetches() == ["1.root.json"])

    updater.connection_lost()  # the coordinator died before replying
    if unwound_first:
        await eventually(lambda: JOB not in updater._active)
    await command_on(updater, connection(new), command)  # re-sent by the restarted coordinator

    await eventually(lambda: new.fetches() == ["1.root.json"])
    assert isinstance(new.sent[0], p.CommandResult)
    assert new.sent[0].data == {"accepted": JOB}
    await stop(updater)


async def test_a_resend_on_a_live_connection_does_not_start_a_second_attempt(
    tmp_path: Path,
) -> None:
    updater, command = make_updater(tmp_path)
    ws = RecordingSocket()
    link = connection(ws)
    await command_on(updater, link, command)
    await eventually(lambda: ws.fetches() == ["1.root.json"])
    resent = p.Command(id=2, action=command.action)  # the coordinator's next id
    await command_on(updater, link, resent)
    await asyncio.sleep(0.2)
    assert ws.fetches() == ["1.root.json"]  # still one attempt, waiting for its reply
    assert len([m for m in ws.sent if isinstance(m, p.CommandResult)]) == 2
    await stop(updater)


async def test_a_metadata_request_the_session_times_out_interrupts_the_job(
    tmp_path: Path,
) -> None:
    """No reply within FETCH_TIMEOUT: the session reports the request expired and the job
    stops as interrupted (no result: the coordinator re-sends it later)."""
    updater, command = make_updater(tmp_path)
    ws = RecordingSocket()
    link = connection(ws)
    await command_on(updater, link, command)
    await eventually(lambda: ws.fetches() == ["1.root.json"])
    [request_id] = link.session.expired(float("inf"))
    updater.fetches_expired([request_id])
    await eventually(lambda: JOB not in updater._active)
    assert not updater._metadata
    await stop(updater)
