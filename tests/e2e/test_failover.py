"""Two coordinator processes on PostgreSQL behind one address (issue 13, item 6): the one
an agent is on freezes (SIGSTOP); the agent notices within two heartbeat intervals and is
back through the other one.

The "one address" is a round-robin TCP forwarder started by the test (what HAProxy in TCP
mode does in production, see the team notes), not part of Careline.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from careline.coordinator.client import AdminClient, Credentials
from careline.coordinator.storage.db import IDLE_IN_TRANSACTION_TIMEOUT
from tests.conftest import PYTHON, CoordinatorProcess, free_port, wait_for_port, wait_until
from tests.e2e.test_scale_out import join_via


class RoundRobin:
    """Forwards each TCP connection on `port` to the next backend port in turn."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self.chosen: list[int] = []  # the backend of each connection, in order
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self.stopping = asyncio.Event()
        server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.ready.set()
        async with server:
            await self.stopping.wait()

    async def _forward(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        backend = self.backends[len(self.chosen) % len(self.backends)]
        self.chosen.append(backend)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", backend)
        except OSError:
            client_w.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(5)


@pytest.fixture
def two_behind_one_address(
    tmp_path, pg_url
) -> Iterator[tuple[CoordinatorProcess, subprocess.Popen[bytes], RoundRobin]]:
    first = CoordinatorProcess(tmp_path, pg_url).start()
    second_port = free_port()
    second = subprocess.Popen(
        [PYTHON, "-m", "careline.coordinator.cli", "serve", "--data", str(first.data),
         "--listen", f"127.0.0.1:{second_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = None
    try:
        wait_for_port(second_port, second)
        proxy = RoundRobin([first.port, second_port])
        yield first, second, proxy
    finally:
        for proc in (first.proc, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        second.terminate()
        second.wait(10)
        first.stop()
        if proxy is not None:
            proxy.close()


def test_agent_is_back_through_the_other_process(two_behind_one_address, spawn_agent):
    first, second, proxy = two_behind_one_address
    second_port = proxy.backends[1]
    agent = spawn_agent("pc", join_via(first, proxy.port, "Failover Co"))
    wait_until(lambda: agent.status()["connection"]["state"] == "connected")
    on = proxy.chosen[-1]  # the process the agent's connection went to
    frozen = first.proc if on == first.port else second
    alive = second_port if on == first.port else first.port
    assert frozen is not None
    frozen.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    # Reconnecting through the same address reaches the process that still answers (with a
    # first retry window of a second, the moment in between can be too short to see).
    wait_until(lambda: (s := agent.status()["connection"])["state"] == "connected"
               and s["since"] > frozen_at, timeout=40, interval=0.05)
    assert proxy.chosen[-1] == alive
    noticed = re.search(r"coordinator silent for ([0-9.]+)s", (agent.state / "agent.log").read_text())
    assert noticed is not None
    assert float(noticed.group(1)) <= 2 * 1.0 + 0.25  # two heartbeat intervals of 1 s
    credentials = Credentials(f"wss://127.0.0.1:{alive}", first.admin_token,
                              (first.data / "pki" / "ca.pem").read_text())

    def status_via_alive() -> str:
        with AdminClient(credentials) as client:
            return str({a["id"]: a for a in client.call("agents.list")}[agent.agent_id]["status"])

    # If it froze inside a transaction (its heartbeat flush, now and then), this agent's row
    # stays locked until PostgreSQL ends the frozen session (IDLE_IN_TRANSACTION_TIMEOUT).
    wait_until(lambda: status_via_alive() == "online",
               timeout=IDLE_IN_TRANSACTION_TIMEOUT + 15)
