"""Scale-out (issue 19): two coordinator processes on one PostgreSQL database behind HAProxy.

    python bench/scale_out.py [--agents 1000] [--database postgresql://127.0.0.1:5432/test]

Creates a fresh PostgreSQL database next to `--database` (dropped at the end), `careline
init` in a temporary data dir with `public_url` at the proxy, starts two `careline serve`
processes on it and Debian's HAProxy (installed with apt-get when missing and run as root)
with the configuration coordinator/haproxy.py writes (TCP/TLS passthrough, leastconn, TLS
health check; README "Scale-out"). N simulated agents (bench/soak_reliability.py's agent:
bench/fleet.py's simulator with an outbox delivered as agent.runner does, events at random
and the real keepalive) connect through the proxy. Reports:

  connect   all connected through the proxy, how long, and how leastconn split them
  ping      agents.ping to all, asked through each process in turn: answers and p99 RTT
            (the other process's agents are reached over LISTEN/NOTIFY)
  failover  kill -9 of the process holding more agents: seconds until 95% (and all) of
            its agents are authenticated again, through the proxy, by the other process
  events    every event the agents emitted during the run (also while they were cut off)
            is stored exactly once: missing and duplicated counts (expect 0)

Everything listens on 127.0.0.1; every process and the database it made are removed on
exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fleet  # bench/fleet.py: the simulator and the process helpers
import psutil
import soak_reliability as soak_mod
from loopback import free_port

from careline.coordinator.datadir import DataDir
from careline.coordinator.haproxy import find_haproxy, haproxy_config

log = fleet.log

TARGET_PING_P99_S = 3.0
TARGET_BACK_95_S = 60.0


def ensure_haproxy() -> str:
    """Debian's haproxy, installed with apt-get (as root) when missing."""
    found = find_haproxy()
    if found:
        return found
    log("haproxy missing: apt-get install -y haproxy")
    subprocess.run(["apt-get", "install", "-y", "-q", "haproxy"], check=True, timeout=600,
                   stdout=subprocess.DEVNULL, env={"DEBIAN_FRONTEND": "noninteractive",
                                                   "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    found = find_haproxy()
    if not found:
        raise RuntimeError("haproxy could not be installed (run as root on Debian/Ubuntu)")
    return found


class ServeProc(fleet.CoordinatorProc):
    """One more `careline serve` on an existing data dir (its own port and log)."""

    def __init__(self, children: fleet.Children, data: Path, port: int, log_file: Path,
                 admin_token: str, ca_pem: str, database_url: str) -> None:
        self.children, self.data, self.log, self.port = children, data, log_file, port
        self.url = f"wss://127.0.0.1:{port}"
        self.admin_token, self.ca_pem, self.database_url = admin_token, ca_pem, database_url
        self.proc = None

    def serve_argv(self) -> list[str]:
        return [*super().serve_argv(), "--listen", f"127.0.0.1:{self.port}"]

    def held(self) -> int:
        """Established connections to this process (HAProxy's health checks are brief)."""
        return sum(1 for c in psutil.Process(self.pid).net_connections("tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == self.port)


async def failover(victim: ServeProc, sim_fleet: fleet.Fleet, soak: soak_mod.Soak,
                   timeout: float) -> dict[str, Any]:
    """kill -9 `victim`; time until 95% (and all) of the agents it held are back."""
    sim = sim_fleet.sim
    before = dict(soak.links)  # agent id -> its open connection
    sim.back_at.clear()
    sim.failures.clear()
    sim.generation += 1  # an agent's next Welcome is recorded in back_at
    killed = time.monotonic()
    victim.kill9()
    # Its agents' connections close within a moment (the kernel resets them, HAProxy
    # passes that on); the others' stay open.
    await asyncio.sleep(2.0)
    cut = sum(1 for ws in before.values() if ws.state.name != "OPEN")
    need = max(1, math.ceil(0.95 * cut))
    deadline = killed + timeout
    last_report = killed
    while len(sim.back_at) < need and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            log(f"  {len(sim.back_at)}/{cut} back ({dict(sim.failures)})")
    back = sorted(sim.back_at)
    t95 = back[need - 1] - killed if len(back) >= need else None
    tail_deadline = min(deadline, time.monotonic() + 30)
    while len(sim.back_at) < cut and time.monotonic() < tail_deadline:
        await asyncio.sleep(0.1)
    back = sorted(sim.back_at)
    return {
        "agents_cut": cut, "back": len(back),
        "back_95_s": fleet._round(t95, 2),
        "back_100_s": fleet._round(back[cut - 1] - killed if cut and len(back) >= cut else None, 2),
        "failures_during_failover": dict(sim.failures),
    }


async def wait_online(proc: ServeProc, n: int, timeout: float) -> float | None:
    """Seconds until agents.list (through `proc`) shows `n` agents online."""
    started = time.monotonic()

    def online() -> int:
        with proc.admin() as client:
            return sum(1 for a in client.call("agents.list") if a["status"] == "online")

    while time.monotonic() - started < timeout:
        if await asyncio.to_thread(online) >= n:
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.5)
    return None


async def ping_through(proc: ServeProc, sim_fleet: fleet.Fleet) -> dict[str, Any]:
    result = await fleet.command_all(proc, sim_fleet)
    return {k: result.get(k) for k in ("answers_with_rtt", "statuses", "p50_s", "p99_s",
                                       "call_seconds", "error") if k in result}


async def run(args: argparse.Namespace, root: Path, children: fleet.Children) -> dict[str, Any]:
    loop, main_task = asyncio.get_running_loop(), asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    n = args.agents
    haproxy = await asyncio.to_thread(ensure_haproxy)
    results: dict[str, Any] = {
        "agents": n, "heartbeat_interval_s": args.heartbeat_interval,
        "event_every_s": args.event_every, "machine": fleet.machine_info(),
        "source": fleet.source_info(),
        "haproxy": subprocess.run([haproxy, "-v"], capture_output=True, text=True,
                                  timeout=30).stdout.splitlines()[0],
    }
    database_url, db_name = await fleet.create_pg_database(args.database)
    processes: list[ServeProc] = []
    sim_fleet: fleet.Fleet | None = None
    try:
        first = await asyncio.to_thread(fleet.CoordinatorProc, children, root, database_url,
                                        args.heartbeat_interval)
        proxy_port = free_port()
        proxy_url = f"wss://127.0.0.1:{proxy_port}"
        datadir = DataDir(first.data)
        datadir.write_settings(dataclasses.replace(datadir.settings(), public_url=proxy_url))
        for i in (1, 2):
            processes.append(ServeProc(children, first.data, first.port if i == 1 else free_port(),
                                       root / f"coordinator{i}.log", first.admin_token,
                                       first.ca_pem, database_url))
        await asyncio.gather(*(proc.start() for proc in processes))
        config = root / "haproxy.cfg"
        config.write_text(haproxy_config(
            f"127.0.0.1:{proxy_port}", [f"127.0.0.1:{proc.port}" for proc in processes],
            str(datadir.ca_file), heartbeat_interval=args.heartbeat_interval, maxconn=n + 500))
        proxy = children.start([haproxy, "-db", "-f", str(config)], root / "haproxy.log")
        await fleet.wait_for_port(proxy_port, proxy)
        await asyncio.sleep(2)  # both servers pass their first health checks
        log(f"coordinators pid {processes[0].pid}, {processes[1].pid}; haproxy on {proxy_url}")

        def join() -> str:
            with processes[0].admin() as client:
                client.call("customers.add", name="Scale Co")
                return str(client.call("tokens.create", customer="Scale Co", uses=n,
                                       expires_seconds=6 * 3600)["join"])

        join_string = fleet.JoinString.parse(await asyncio.to_thread(join))
        identities = [fleet.Identity(fleet.generate_key()) for _ in range(n)]
        log(f"enrolling {n} agents through the proxy")
        results["enroll"] = await fleet.enroll_all(join_string, identities, 6,
                                                   timeout=max(120, n * 0.5))
        soak = soak_mod.Soak()
        soak_mod.SoakAgent.soak = soak
        soak_mod.SoakAgent.soak_every = args.event_every  # type: ignore[attr-defined]
        sim_fleet = fleet.Fleet(proxy_url, first.ca_pem, identities, bare=False, concurrency=200,
                                seed=args.seed, agent_class=soak_mod.SoakAgent)
        connected = await sim_fleet.connect_all(timeout=args.connect_timeout)
        split = [proc.held() for proc in processes]
        results["connect"] = {**connected, "held_per_process": split}
        log(f"{connected['connected']}/{n} online in {connected['seconds']} s, split {split}")

        # Presence is written in batches: ping once every process's view says all online.
        results["online_in_db_s"] = await wait_online(processes[0], n, timeout=120)
        results["ping"] = {}
        for i, proc in enumerate(processes, 1):
            results["ping"][f"through_process_{i}"] = await ping_through(proc, sim_fleet)
            log(f"ping through process {i}: {results['ping'][f'through_process_{i}']}")

        victim_index = 0 if split[0] >= split[1] else 1
        victim, survivor = processes[victim_index], processes[1 - victim_index]
        log(f"kill -9 process {victim_index + 1} (pid {victim.pid}, {split[victim_index]} agents)")
        results["failover"] = await failover(victim, sim_fleet, soak, args.failover_timeout)
        results["failover"]["held_after_by_survivor"] = survivor.held()
        log(f"failover: {results['failover']}")

        soak.emitting = False
        agents: list[soak_mod.SoakAgent] = sim_fleet.agents  # type: ignore[assignment]
        deadline = time.monotonic() + args.settle_timeout
        while time.monotonic() < deadline:
            if sum(len(a.outbox) for a in agents) == 0 and sim_fleet.sim.online == n:
                break
            await asyncio.sleep(0.5)
        stored = await soak_mod.stored_events(database_url)
        by_id = {a.identity.agent_id: a for a in agents}
        results["events"] = {
            "emitted": sum(len(a.emitted) for a in agents),
            "stored": sum(len(v) for v in stored.values()),
            "missing": sum(len(set(a.emitted) - set(stored.get(i, []))) for i, a in by_id.items()),
            "duplicated": sum(len(seqs) - len(set(seqs)) for seqs in stored.values()),
            "undelivered_at_end": sum(len(a.outbox) for a in agents),
        }
        results["online_at_end"] = sim_fleet.sim.online
        ping_p99 = [v.get("p99_s") for v in results["ping"].values()]
        results["ok"] = bool(
            connected["connected"] == n
            and all(v.get("answers_with_rtt") == n for v in results["ping"].values())
            and all(p is not None and p <= TARGET_PING_P99_S for p in ping_p99)
            and results["failover"]["back_95_s"] is not None
            and results["failover"]["back_95_s"] <= TARGET_BACK_95_S
            and results["events"]["missing"] == 0 and results["events"]["duplicated"] == 0)
    finally:
        if sim_fleet is not None:
            sim_fleet.sim.stopping = True
            with contextlib.suppress(Exception):
                await sim_fleet.close()
        for proc in processes:
            proc.stop()
        children.kill_all()
        with contextlib.suppress(Exception):
            await fleet.drop_pg_database(args.database, db_name)
    return results


def table(r: dict[str, Any]) -> str:
    c, f, e = r["connect"], r["failover"], r["events"]
    lines = [
        f"scale-out: {r['agents']} agents, 2 coordinators on PostgreSQL behind {r['haproxy']}, "
        f"{r['machine']['nproc']} cores, heartbeat {r['heartbeat_interval_s']:g} s",
        f"  connect   {c['connected']}/{r['agents']} through the proxy in {c['seconds']} s "
        f"({c['rate_per_s']}/s), held per process {c['held_per_process']}",
    ]
    for name, ping in r["ping"].items():
        lines.append(f"  ping      {name}: {ping.get('answers_with_rtt')} answered, "
                     f"p50 {ping.get('p50_s')} s, p99 {ping.get('p99_s')} s "
                     f"(target <= {TARGET_PING_P99_S:g} s) {ping.get('error') or ''}".rstrip())
    lines += [
        f"  failover  kill -9 cut {f['agents_cut']} agents: 95% back in {f['back_95_s']} s, all in "
        f"{f['back_100_s']} s (target 95% <= {TARGET_BACK_95_S:g} s); survivor holds "
        f"{f['held_after_by_survivor']}",
        f"  events    {e['emitted']} emitted, {e['stored']} stored, {e['missing']} missing, "
        f"{e['duplicated']} duplicated",
        f"  online at the end: {r['online_at_end']}/{r['agents']}; OK: {r['ok']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--database", default="postgresql://127.0.0.1:5432/test",
                        help="PostgreSQL server (a fresh database is created next to it)")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument("--event-every", type=float, default=20.0,
                        help="mean seconds between one agent's events")
    parser.add_argument("--connect-timeout", type=float, default=600.0)
    parser.add_argument("--failover-timeout", type=float, default=180.0)
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args(argv)
    if args.agents < 1:
        parser.error("--agents must be at least 1")
    if not args.database.startswith("postgresql"):
        parser.error("--database must be a postgresql:// URL")
    soft, hard = fleet.raise_nofile()
    if soft < args.agents + 200:
        parser.error(f"RLIMIT_NOFILE is {soft} (hard {hard}); {args.agents} agents need more")
    return fleet.run_and_report(args, "careline-scale-out-", run, table)


if __name__ == "__main__":
    sys.exit(main())
