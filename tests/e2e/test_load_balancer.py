"""Two coordinator processes on one PostgreSQL behind a real HAProxy (issue 19, scale-out;
issue 13, item 6): agents and technicians reach both through one address, and an agent
whose process freezes is back through the other within seconds, its outbox intact."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest

from careline.agent.outbox import Outbox
from careline.coordinator.datadir import DataDir
from careline.coordinator.haproxy import find_haproxy
from tests.conftest import PYTHON, CoordinatorProcess, free_port, run, wait_for_port, wait_until
from tests.e2e.test_durability import events_of

INTERVAL = 2.0  # heartbeat interval of the test coordinators (health checks every 0.4 s)

HAPROXY = find_haproxy()


@dataclass
class Cluster:
    first: CoordinatorProcess
    second: subprocess.Popen[bytes]
    second_port: int
    proxy_url: str
    proxy_log: Path

    def taken_out(self, port: int, since: int) -> bool:
        """HAProxy has marked the process on `port` down, in its log past byte `since`
        (careline1 is the first backend)."""
        name = "careline1" if port == self.first.port else "careline2"
        return f"coordinators/{name} is DOWN" in self.proxy_log.read_bytes()[since:].decode()

    def processes(self) -> dict[int, psutil.Process]:
        """Listening port -> coordinator process."""
        assert self.first.proc is not None
        return {self.first.port: psutil.Process(self.first.proc.pid),
                self.second_port: psutil.Process(self.second.pid)}


def agent_connections(proc: psutil.Process, port: int) -> int:
    """Established connections to this process's port (HAProxy's health checks are short)."""
    return sum(1 for c in proc.net_connections("tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    if HAPROXY is None:
        if os.environ.get("CARELINE_REQUIRE_PG"):  # CI: scripts/test.sh installs it
            pytest.fail("haproxy is not installed (apt-get install haproxy)")
        pytest.skip("haproxy is not installed (scripts/test.sh installs Debian's package)")
    first = CoordinatorProcess(tmp_path, pg_url, heartbeat_interval=INTERVAL)
    proxy_port, second_port = free_port(), free_port()
    health_ports = free_port(), free_port()  # each process answers HAProxy's checks there
    proxy_url = f"wss://127.0.0.1:{proxy_port}"
    # Join strings and the local CLI point at the proxy; every agent arrives from its address.
    datadir = DataDir(first.data)
    datadir.write_settings(replace(datadir.settings(), public_url=proxy_url,
                                   max_unauthenticated_per_address=10_000))
    # The configuration as a vendor gets it: `careline haproxy-config`.
    config = tmp_path / "haproxy.cfg"
    config.write_text(run([PYTHON, "-m", "careline.coordinator.cli", "haproxy-config",
                           "--data", str(first.data), "--listen", f"127.0.0.1:{proxy_port}",
                           "--backend", f"127.0.0.1:{first.port}/{health_ports[0]}",
                           "--backend", f"127.0.0.1:{second_port}/{health_ports[1]}",
                           "--maxconn", "1000"]).stdout)
    assert "inter 400ms fall 2" in config.read_text()  # from the 2 s heartbeat interval
    assert f"port {health_ports[1]}" in config.read_text()
    first.start("--health-listen", f"127.0.0.1:{health_ports[0]}")
    with open(tmp_path / "coordinator2.log", "ab") as log:
        second = subprocess.Popen(
            [PYTHON, "-m", "careline.coordinator.cli", "serve", "--data", str(first.data), "-v",
             "--listen", f"127.0.0.1:{second_port}",
             "--health-listen", f"127.0.0.1:{health_ports[1]}"], stdout=log, stderr=subprocess.STDOUT)
    with open(tmp_path / "haproxy.log", "ab") as log:
        proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for_port(second_port, second)
        wait_for_port(proxy_port, proxy)
        yield Cluster(first, second, second_port, proxy_url, tmp_path / "haproxy.log")
    finally:
        for proc in (proxy, second):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)
        if first.proc is not None and first.proc.poll() is None:
            first.proc.send_signal(signal.SIGCONT)
        first.stop()


def test_frozen_process_agents_come_back_through_the_other(cluster, spawn_agent):
    first = cluster.first
    agents = [spawn_agent(f"pc{i}", first.join_string("LB Co")) for i in range(3)]
    by_id = {a.agent_id: a for a in agents}
    for agent in agents:
        connection = wait_until(lambda agent=agent: (c := agent.status()["connection"])
                                .get("state") == "connected" and c)
        assert connection["coordinator"] == cluster.proxy_url
    # `agents list` from the data dir goes through the proxy too (public_url).
    wait_until(lambda: {r["id"]: r["status"] for r in first.cli("agents", "list")}
               == dict.fromkeys(by_id, "online"))

    # Freeze the process holding more of them (leastconn spreads them, unless a health
    # check on this busy machine took one process out for a moment while they connected).
    procs = cluster.processes()
    held = wait_until(lambda: (h := {port: agent_connections(proc, port) for port, proc in procs.items()})
                      and sum(h.values()) == 3 and h)
    frozen_port = max(held, key=lambda port: held[port])
    frozen = procs[frozen_port]
    logged = cluster.proxy_log.stat().st_size
    frozen.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    # An event queued during the outage (the agents send what is pending on reconnecting).
    queued = {}
    for agent in agents:
        outbox = Outbox(agent.state / "outbox.db")
        queued[agent.agent_id] = outbox.put("update_step", {"during": "freeze"})
        outbox.close()

    def moved() -> dict[str, dict]:
        statuses = {a.agent_id: a.status()["connection"] for a in agents}
        return {i: s for i, s in statuses.items() if s["since"] > frozen_at}

    left = wait_until(lambda: len(m := moved()) >= held[frozen_port] and m, timeout=10, interval=0.05)
    noticed = max(s["since"] for s in left.values()) - frozen_at
    assert noticed <= 2 * INTERVAL + 0.5, f"noticed after {noticed:.2f}s"
    print(f"agents on the frozen process noticed after {noticed:.2f}s")

    # Back through the proxy, now to the live process only; the technicians' view, also
    # through the proxy, shows every agent online.
    live_port = next(port for port in procs if port != frozen_port)
    wait_until(lambda: all(a.status()["connection"]["state"] == "connected" for a in agents),
               timeout=20, interval=0.2)
    wait_until(lambda: agent_connections(procs[live_port], live_port) >= 3)
    # The technician's connection must not go to the frozen process: HAProxy takes it out
    # (two failed checks; the agents may have left it a moment before, and leastconn
    # favours the process holding fewest).
    wait_until(lambda: cluster.taken_out(frozen_port, logged), timeout=3 * INTERVAL)
    # (presence is written in batches: online once the live process has flushed it)
    wait_until(lambda: {r["id"]: r["status"] for r in first.cli("agents", "list", "--server",
                                                                cluster.proxy_url)}
               == dict.fromkeys(by_id, "online"), timeout=5 * INTERVAL, interval=0.5)
    # The movers sent the event queued during the outage when they came back: stored once.
    # (The others' sits in their outbox until something wakes it; nothing tells them.)
    for agent_id in left:
        seq = queued[agent_id]
        wait_until(lambda agent_id=agent_id, seq=seq:
                   [e["seq"] for e in events_of(first, agent_id)].count(seq) == 1)
        # (its status file is rewritten with each heartbeat)
        wait_until(lambda agent_id=agent_id: by_id[agent_id].status()["connection"]["outbox_pending"] == 0,
                   timeout=3 * INTERVAL)
    print(f"all back {time.time() - frozen_at:.2f}s after the freeze")
    frozen.send_signal(signal.SIGCONT)
