"""Fixtures that start real processes: coordinators (SQLite or PostgreSQL) and agents.

Everything listens on 127.0.0.1 only. PostgreSQL tests get a fresh database each and skip
(with the reason) only when no server answers and CARELINE_REQUIRE_PG is unset.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get("CARELINE_TEST_PG", "postgresql://127.0.0.1:5432/test")
PYTHON = sys.executable


PORT_SPAN = 12_000  # the ports below the kernel's range for outgoing connections that tests use


def ephemeral_low() -> int:
    """Where the kernel's range for outgoing connections' local ports starts."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def worker_ports(worker: str, workers: int, low: int) -> range:
    """Pytest-xdist worker `worker` ("gw0", ...; "" without xdist)'s own slice of the
    PORT_SPAN ports below `low`."""
    first = max(1024, low - PORT_SPAN)
    size = (low - first) // max(1, workers)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return range(first + index * size, first + (index + 1) * size)


_ports: Iterator[int] | None = None


def free_port() -> int:
    """A port nothing listens on, from this worker's slice in turn. Bound to port 0, two
    xdist workers were given the same port between one's check and its server's bind (a
    coordinator then failed to start, "address already in use", and the test talked to the
    other worker's server), and ports in the kernel's range for outgoing connections are
    taken by them."""
    global _ports
    if _ports is None:
        ports = worker_ports(os.environ.get("PYTEST_XDIST_WORKER", ""),
                             int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), ephemeral_low())
        offset = os.getpid() % len(ports)  # elsewhere each run: the last run's may be in TIME_WAIT
        _ports = itertools.cycle([*ports[offset:], *ports[:offset]])
    for port in itertools.islice(_ports, 2000):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    with socket.socket() as s:  # the slice is taken: any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")


def run(argv: list[str], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


# ----------------------------------------------------------------------------- PostgreSQL
def _pg_reachable() -> str | None:
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def pg_available() -> None:
    problem = _pg_reachable()
    if problem is None:
        return
    if os.environ.get("CARELINE_REQUIRE_PG"):
        pytest.fail(f"CARELINE_REQUIRE_PG is set but PostgreSQL at {PG_ADMIN_URL} is unreachable: {problem}")
    pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} unreachable ({problem}); set CARELINE_TEST_PG")


@pytest.fixture
def pg_url(pg_available: None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    import asyncio

    import asyncpg

    name = f"careline_t_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage-backed test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'careline.db'}"
    return str(request.getfixturevalue("pg_url"))


# ----------------------------------------------------------------------------- processes
class CoordinatorProcess:
    """`careline init` + `careline serve` in a temporary data dir."""

    def __init__(self, root: Path, database: str = "", heartbeat_interval: float = 1.0) -> None:
        self.data = root / "coordinator"
        self.port = free_port()
        self.url = f"wss://127.0.0.1:{self.port}"
        argv = [
            PYTHON, "-m", "careline.coordinator.cli", "init", "--data", str(self.data),
            "--listen", f"127.0.0.1:{self.port}", "--heartbeat-interval", str(heartbeat_interval),
            "--json",
        ]
        if database:
            argv += ["--database", database]
        self.init_result = json.loads(run(argv).stdout)
        self.admin_token: str = self.init_result["admin_token"]
        self.proc: subprocess.Popen[str] | None = None
        self.log = root / "coordinator.log"

    def start(self, *extra: str) -> CoordinatorProcess:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "careline.coordinator.cli", "serve", "--data", str(self.data), "-v", *extra],
                stdout=log, stderr=subprocess.STDOUT, text=True,
            )
        wait_for_port(self.port, self.proc)
        return self

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args: str, token: str | None = None, check: bool = True) -> Any:
        """Run a technician command with --json and return its parsed output."""
        argv = [PYTHON, "-m", "careline.coordinator.cli", *args, "--data", str(self.data), "--json"]
        if token:
            argv += ["--token", token]
        result = run(argv, check=check)
        if not check:
            return result
        return json.loads(result.stdout) if result.stdout.strip() else None

    def client(self, token: str | None = None) -> Any:
        from careline.coordinator.client import AdminClient, resolve_credentials

        return AdminClient(resolve_credentials(None, token, None, str(self.data)))

    def join_string(self, customer: str = "Acme", uses: int = 5, expires: str = "1h") -> str:
        with self.client() as client:
            if not any(c["name"] == customer for c in client.call("customers.list")):
                client.call("customers.add", name=customer)
            return str(client.call("tokens.create", customer=customer, uses=uses,
                                   expires_seconds=3600)["join"])

    def agents(self) -> dict[str, dict[str, Any]]:
        with self.client() as client:
            return {a["id"]: a for a in client.call("agents.list")}


def fake_hardware() -> dict[str, str]:
    """A PC of its own: tests run every agent on one host, which would otherwise make each
    a reinstall of the one before (the raw values the agent hashes; agent/platform.py)."""
    serial = uuid.uuid4().hex
    return {"uuid": str(uuid.uuid4()), "serial": serial, "disk": f"WD-{serial[:12]}",
            "mac": ":".join(serial[i:i + 2] for i in range(0, 12, 2))}


class AgentProcess:
    def __init__(self, root: Path, name: str, hardware: dict[str, str] | None = None) -> None:
        self.state = root / name
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.agent_id = ""
        self.hardware = hardware or fake_hardware()

    @property
    def env(self) -> dict[str, str]:
        """The test's environment as it is now, with this PC's (fake) hardware identity."""
        return {**os.environ, "CARELINE_AGENT_HARDWARE": json.dumps(self.hardware)}

    def enroll(self, join: str, *extra: str) -> AgentProcess:
        out = run([PYTHON, "-m", "careline.agent.cli", "enroll", join, "--state", str(self.state),
                   *extra], env=self.env)
        self.agent_id = out.stdout.split("Enrolled as ", 1)[1].split(" ", 1)[0]
        return self

    def start(self) -> AgentProcess:
        # Its log goes to a file: an unread pipe fills up and blocks a chatty agent.
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "careline.agent", "run", "--state", str(self.state)],
                stdout=subprocess.DEVNULL, stderr=log, text=True, env=self.env,
            )
        return self

    def status(self) -> dict[str, Any]:
        out = run([PYTHON, "-m", "careline.agent.cli", "status", "--state", str(self.state), "--json"])
        return dict(json.loads(out.stdout))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def coordinator(tmp_path: Path, database: str) -> Iterator[CoordinatorProcess]:
    """A running coordinator on SQLite and (second run) on PostgreSQL."""
    coord = CoordinatorProcess(tmp_path, database).start()
    yield coord
    coord.stop()


@pytest.fixture
def sqlite_coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    """A running coordinator on SQLite only, for behaviour that does not depend on storage."""
    coord = CoordinatorProcess(tmp_path).start()
    yield coord
    coord.stop()


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Any]:
    started: list[AgentProcess] = []

    def spawn(name: str, join: str, *extra: str, start: bool = True,
              hardware: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(tmp_path, name, hardware).enroll(join, *extra)
        started.append(agent)
        return agent.start() if start else agent

    yield spawn
    for agent in started:
        agent.kill()


# ----------------------------------------------------------------------------- scheduling
# The longest files start first: collected last (alphabetically), they used to stretch the
# end of a parallel (xdist) run by a minute while the other workers sat idle.
LONGEST_FIRST = ("test_packaging.py", "test_bench_smoke.py", "test_load_balancer.py",
                 "test_web_console.py", "test_rollout_scope.py", "test_rollouts.py",
                 "test_self_update.py", "test_notify.py", "test_updates.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: order kept otherwise
