"""Scale-out (issue 19): two coordinator processes on one PostgreSQL database behind HAProxy.

    python bench/scale_out.py [--agents 1000] [--database postgresql://127.0.0.1:5432/test]
                              [--workers W] [--proxies K]

Creates a fresh PostgreSQL database next to `--database` (dropped at the end), `careline
init` in a temporary data dir with `public_url` at the proxy, starts two `careline serve`
processes on it and Debian's HAProxy (installed with apt-get when missing and run as root)
with the configuration coordinator/haproxy.py writes (TCP/TLS passthrough, leastconn, TLS
health check; README "Scale-out"). N simulated agents (bench/soak_reliability.py's agent:
bench/fleet.py's simulator with an outbox delivered as agent.runner does, events at random
and the real keepalive) enroll and connect through the proxy. Reports:

  connect   all connected through the proxy, how long, and how leastconn split them
  ping      agents.ping to all, asked through each process in turn: answers, p99 RTT and
            the call's length (the other process's agents are reached over LISTEN/NOTIFY);
            the target is judged with the fleet emitting its events, and the same pings
            are repeated with them paused (and delivered), to show what the events cost
  failover  kill -9 of the process holding more agents: seconds until 95% (and all) of
            its agents are authenticated again, through the proxy, by the other process;
            then the killed process is started again, as its supervisor would
  events    every event the agents emitted during the run (also while they were cut off)
            is stored exactly once: missing and duplicated counts (expect 0)

Past one process's open files. Every process here is held to RLIMIT_NOFILE, whose hard
limit may be below what 20,000 agents need (20,000 on the machine issue 19 names, and
without CAP_SYS_RESOURCE it cannot be raised). So the run spreads what would not fit:
- HAProxy needs two descriptors per proxied connection. K HAProxy processes run the same
  configuration on the same port (HAProxy binds with SO_REUSEPORT on Linux, so the kernel
  spreads new connections across them), each with `maxconn` at its share; leastconn then
  balances within each HAProxy process. A production deployment runs one HAProxy with
  LimitNOFILE raised (README "Scale-out"), not this.
- The simulated fleet runs in W worker processes (this script with --worker), each
  holding its slice of the agents and driven by this process over a pipe: enroll, connect,
  status, the failover's arming and cut, the events each agent emitted. Times are
  time.monotonic(), CLOCK_MONOTONIC, one clock for every process on the machine.
K and W are the fewest under the limit (1 and 1 for small runs); --proxies and --workers
force more. The surviving coordinator is held to the same limit, so at 20,000 agents it
cannot take every one of them back: the failover target is 95 %, and the restart of the
killed process takes the rest.

Everything listens on 127.0.0.1; every process and the database it made are removed on
exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fleet  # bench/fleet.py: the simulator and the process helpers
import psutil
import soak_reliability as soak_mod
from loopback import free_port
from measure import percentile

from careline.coordinator.bootstrap import tune_gc
from careline.coordinator.datadir import DataDir
from careline.coordinator.haproxy import find_haproxy, haproxy_config

log = fleet.log

TARGET_PING_P99_S = 3.0
TARGET_BACK_95_S = 60.0
FD_MARGIN = 300  # descriptors a process needs besides its connections (DB pool, logs, ...)
FLEET_CONCURRENCY = 200  # first connections under way at once, over all workers
ENROLL_CONCURRENCY = 16  # enrollments under way at once, per worker
QUIET_DRAIN_TIMEOUT_S = 30.0  # for the outboxes to empty before the pings with events paused
PROFILE_PING_SECONDS = 15.0  # how long --profile records back-to-back pings to all
# Each phase's time limit grows with the fleet: seconds per agent, and at least MIN_TIMEOUT_S.
TIMEOUT_PER_AGENT_S = {"enroll": 0.05, "connect": 0.05, "failover": 0.01, "settle": 0.02}
MIN_TIMEOUT_S = 180.0


def layout(agents: int, soft_limit: int, workers: int = 0, proxies: int = 0) -> tuple[int, int]:
    """(simulator workers, HAProxy processes): the fewest that keep each one's descriptors
    under `soft_limit` (a worker: one per agent; HAProxy: two), unless given."""
    room = soft_limit - FD_MARGIN
    return workers or math.ceil(agents / room), proxies or math.ceil(2 * agents / room)


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


def established(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` on its local `port`."""
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


class CpuShares:
    """CPU of each kind of process over a phase, in % of one core: who the cores went to.
    A process that ends during the phase counts for nothing (`roles` is re-read at the end,
    so PostgreSQL backends started meanwhile count from zero)."""

    def __init__(self, roles: Callable[[], dict[str, list[int]]]) -> None:
        self.roles = roles
        self.t0 = time.monotonic()
        self.cpu0 = {pid: cpu for pids in roles().values() for pid in pids
                     if (cpu := _cpu(pid)) is not None}

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out: dict[str, float] = {}
        for role, pids in self.roles().items():
            used = sum(now - self.cpu0.get(pid, 0.0) for pid in pids
                       if (now := _cpu(pid)) is not None)
            out[role] = round(100 * used / wall, 1)
        return out


def _cpu(pid: int) -> float | None:
    try:
        return fleet.cpu_seconds(pid)
    except psutil.Error:
        return None


def postgres_pids() -> list[int]:
    return [proc.pid for proc in psutil.process_iter(["name"]) if proc.info["name"] == "postgres"]


def listens(pid: int, port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in psutil.Process(pid).net_connections("tcp"))


class ServeProc(fleet.CoordinatorProc):
    """One more `careline serve` on an existing data dir (its own port and log)."""

    def __init__(self, children: fleet.Children, data: Path, port: int, log_file: Path,
                 admin_token: str, ca_pem: str, database_url: str, health_port: bool) -> None:
        self.children, self.data, self.log, self.port = children, data, log_file, port
        # HAProxy's checks on a port of its own (`serve --health-listen`), else TLS on `port`
        self.health_port = free_port() if health_port else None
        self.url = f"wss://127.0.0.1:{port}"
        self.admin_token, self.ca_pem, self.database_url = admin_token, ca_pem, database_url
        self.proc = None

    def serve_argv(self) -> list[str]:
        health = [] if self.health_port is None else ["--health-listen", f"127.0.0.1:{self.health_port}"]
        return [*super().serve_argv(), "--listen", f"127.0.0.1:{self.port}", *health]

    @property
    def backend(self) -> str:
        """Its `haproxy-config --backend`."""
        address = f"127.0.0.1:{self.port}"
        return address if self.health_port is None else f"{address}/{self.health_port}"

    def held(self) -> int:
        """Established connections to this process (HAProxy's health checks are brief)."""
        return established(self.pid, self.port)


# ============================================================================= workers
class Slice:
    """A worker's share of the fleet: its identities, enrolled and connected here; the
    parent calls these methods by name (`Worker.call`), results go back as JSON."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.identities = [fleet.Identity(fleet.generate_key()) for _ in range(config["agents"])]
        self.soak = soak_mod.Soak()
        soak_mod.SoakAgent.soak = self.soak
        soak_mod.SoakAgent.soak_every = config["event_every"]
        self.fleet = fleet.Fleet(config["url"], config["ca_pem"], self.identities, bare=False,
                                 concurrency=config["concurrency"], seed=config["seed"],
                                 agent_class=soak_mod.SoakAgent)
        self.agents: list[soak_mod.SoakAgent] = self.fleet.agents  # type: ignore[assignment]
        self.before: dict[str, Any] = {}

    async def enroll(self, timeout: float) -> dict[str, Any]:
        join = fleet.JoinString.parse(self.config["join"])
        return await fleet.enroll_all(join, self.identities, ENROLL_CONCURRENCY, timeout=timeout)

    async def connect(self, timeout: float) -> dict[str, Any]:
        result = await self.fleet.connect_all(timeout)
        return {**result, "last_online_at": max(self.fleet.sim.first_online_at, default=None)}

    async def status(self) -> dict[str, Any]:
        sim = self.fleet.sim
        return {"online": sim.online, "back": len(sim.back_at), "failures": dict(sim.failures),
                "pending": sum(len(a.outbox) for a in self.agents)}

    async def arm(self) -> None:
        """Before the kill: remember every open connection; the next Welcome is a return."""
        sim = self.fleet.sim
        self.before = dict(self.soak.links)
        sim.back_at.clear()
        sim.failures.clear()
        sim.generation += 1

    async def cut(self) -> list[float]:
        """Agents whose connection of before the kill is no longer open: the reconnect
        window each was given in its last Welcome (it spreads its first retry over it)."""
        by_id = {a.identity.agent_id: a for a in self.agents}
        return [by_id[i].first_window for i, ws in self.before.items() if ws.state.name != "OPEN"]

    async def back_at(self) -> list[float]:
        return list(self.fleet.sim.back_at)

    async def set_emitting(self, on: bool) -> None:
        self.soak.emitting = on

    async def emitted(self) -> dict[str, list[int]]:
        return {a.identity.agent_id: a.emitted for a in self.agents}

    async def close(self) -> None:
        await self.fleet.close()


async def worker_main() -> None:
    """`scale_out.py --worker`: a Slice driven over stdin/stdout, one JSON object a line;
    the first line is its configuration. End of input (the parent gone) ends it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    piece = Slice(json.loads(await reader.readline()))
    calls = {"enroll", "connect", "status", "arm", "cut", "back_at", "set_emitting", "emitted"}
    try:
        while line := await reader.readline():
            request = json.loads(line)
            try:
                if request["op"] not in calls:
                    raise ValueError(f"unknown call {request['op']!r}")
                reply = {"result": await getattr(piece, request["op"])(**request["args"])}
            except Exception as exc:  # reported to the parent, which fails the run
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await piece.close()


class Worker:
    """The parent's handle on one worker process (its log lines go to our stderr)."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index, self.proc = index, proc
        self.lock = asyncio.Lock()

    @classmethod
    async def start(cls, index: int, config: dict[str, Any]) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            limit=256 << 20)
        worker = cls(index, proc)
        await worker._send(config)
        return worker

    async def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.proc.stdin.drain()

    async def call(self, op: str, wait: float = 60.0, **args: Any) -> Any:
        """`op` run by the worker's Slice; its result (`wait`: its own time limit, if any)."""
        assert self.proc.stdout is not None
        async with self.lock:
            await self._send({"op": op, "args": args})
            line = await asyncio.wait_for(self.proc.stdout.readline(), wait + 30)
        if not line:
            raise RuntimeError(f"worker {self.index} exited ({self.proc.returncode}); see its stderr")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self.index}: {op}: {reply['error']}")
        return reply["result"]

    async def stop(self) -> None:
        """End of input closes its fleet; killed if it takes longer than 30 s."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def on_all(workers: list[Worker], op: str, wait: float = 60.0, **args: Any) -> list[Any]:
    return await asyncio.gather(*(w.call(op, wait, **args) for w in workers))


async def start_workers(n: int, count: int, base: dict[str, Any]) -> list[Worker]:
    """`count` workers sharing `n` agents as evenly as can be."""
    sizes = [n // count + (1 if i < n % count else 0) for i in range(count)]
    return list(await asyncio.gather(*(
        Worker.start(i + 1, {**base, "agents": size, "seed": base["seed"] + i})
        for i, size in enumerate(sizes))))


async def fleet_status(workers: list[Worker]) -> dict[str, Any]:
    parts = await on_all(workers, "status")
    failures: collections.Counter[str] = collections.Counter()
    for part in parts:
        failures.update(part["failures"])
    return {"online": sum(p["online"] for p in parts), "back": sum(p["back"] for p in parts),
            "pending": sum(p["pending"] for p in parts), "failures": dict(failures)}


# ============================================================================= phases
async def enroll(workers: list[Worker], n: int, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    parts = await on_all(workers, "enroll", timeout, timeout=timeout)
    elapsed = time.monotonic() - started
    retries: collections.Counter[str] = collections.Counter()
    for part in parts:
        retries.update(part["retries"])
    return {"seconds": round(elapsed, 2), "rate_per_s": round(n / elapsed, 1),
            "retries": dict(retries)}


async def connect(workers: list[Worker], n: int, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    parts = await on_all(workers, "connect", timeout, timeout=timeout)
    connected = sum(p["connected"] for p in parts)
    last = max((p["last_online_at"] for p in parts if p["last_online_at"] is not None),
               default=None)
    elapsed = last - started if last is not None else None
    failures: collections.Counter[str] = collections.Counter()
    for part in parts:
        failures.update(part["failures"])
    return {"connected": connected, "seconds": fleet._round(elapsed, 3),
            "rate_per_s": round(connected / elapsed, 1) if elapsed else 0.0,
            "handshake_p99_s_per_worker": [p["handshake_p99_s"] for p in parts],
            "failures": dict(failures)}


async def wait_online(proc: ServeProc, n: int, timeout: float) -> float | None:
    """Seconds until the fleet overview (through `proc`) counts `n` agents online (at 20,000
    agents, `agents.list`'s one reply is past the admin channel's 8 MiB frame limit)."""
    started = time.monotonic()

    def online() -> int:
        with proc.admin() as client:
            return int(client.call("fleet.overview")["totals"]["online"])

    while time.monotonic() - started < timeout:
        if await asyncio.to_thread(online) >= n:
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.5)
    return None


async def ping_through(proc: ServeProc,
                       roles: Callable[[], dict[str, list[int]]]) -> dict[str, Any]:
    """agents.ping {"all": true} through `proc` (fleet.command_all's call; the agents'
    side of it lives in the workers, so only the answers are counted here)."""
    from careline.shared.errors import RemoteError

    def call() -> tuple[list[Any], float]:
        with proc.admin() as client:
            started = time.monotonic()
            partials = list(client.stream("agents.ping", all=True, timeout=5.0))
            return partials, time.monotonic() - started

    shares = CpuShares(roles)
    try:
        partials, seconds = await asyncio.wait_for(asyncio.to_thread(call), 300)
    except RemoteError as exc:
        return {"error": f"{exc.code}: {exc}"}
    cpu = shares.read()
    rtts = fleet.rtts_in(partials)
    statuses = collections.Counter(
        part["status"] for part in partials if isinstance(part, dict) and "status" in part)
    return {"answers_with_rtt": len(rtts), "statuses": dict(statuses),
            "p50_s": fleet._round(percentile(rtts, 50)), "p99_s": fleet._round(percentile(rtts, 99)),
            "call_seconds": round(seconds, 3), "cpu_percent_of_a_core": cpu}


async def profile_ping(processes: list[ServeProc], workers: list[Worker], out: Path,
                       roles: Callable[[], dict[str, list[int]]]) -> dict[str, Any]:
    """Pings to all through process 1, back to back for PROFILE_PING_SECONDS, apart from the
    measured ones (py-spy takes CPU), with both processes (the asker, the relaying holder)
    and the simulators recorded, busy samples only: where each side's CPU goes."""
    import pyspy

    recordings = pyspy.Recordings(
        {**{f"process_{i}": proc.pid for i, proc in enumerate(processes, 1)},
         **{f"simulator_{w.index}": w.proc.pid for w in workers}},
        PROFILE_PING_SECONDS, out, prefix="ping_", busy_only=True)
    pings: list[dict[str, Any]] = []
    started = time.monotonic()
    while time.monotonic() - started < PROFILE_PING_SECONDS - 2 and len(pings) < 20:
        pings.append(await ping_through(processes[0], roles))
    return {"pings": len(pings), "p99_s": [ping.get("p99_s") for ping in pings],
            **await asyncio.to_thread(recordings.finish)}


async def failover(victim: ServeProc, workers: list[Worker], timeout: float,
                   roles: Callable[[], dict[str, list[int]]],
                   profile: dict[str, int] | None = None, out: Path | None = None) -> dict[str, Any]:
    """kill -9 `victim`; time until 95% (and all) of the agents it held are back; then
    start it again. `profile`: name -> pid of processes py-spy records for the first 60 s
    into `out` (the survivor, the simulators)."""
    await on_all(workers, "arm")
    shares = CpuShares(roles)
    recordings = None
    if profile and out is not None:
        import pyspy

        recordings = pyspy.Recordings(profile, 60, out, prefix="failover_")
    killed = time.monotonic()
    victim.kill9()
    # Its agents' connections close within a moment (the kernel resets them, HAProxy
    # passes that on); the others' stay open.
    await asyncio.sleep(2.0)
    windows = [w for part in await on_all(workers, "cut") for w in part]
    cut = len(windows)
    need = max(1, math.ceil(0.95 * cut))
    deadline = killed + timeout
    last_report = killed
    status = await fleet_status(workers)
    while status["back"] < cut and time.monotonic() < deadline:
        if status["back"] >= need:  # a little longer for the tail, bounded
            deadline = min(deadline, time.monotonic() + 30)
        await asyncio.sleep(0.25)
        status = await fleet_status(workers)
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            log(f"  {status['back']}/{cut} back ({status['failures']})")
    back = sorted(t for part in await on_all(workers, "back_at") for t in part)
    result = {
        "agents_cut": cut, "back": len(back),
        "back_95_s": fleet._round(back[need - 1] - killed if len(back) >= need else None, 2),
        "back_100_s": fleet._round(back[cut - 1] - killed if cut and len(back) >= cut else None, 2),
        "failures_during_failover": status["failures"],
        "reconnect_window_p50_s": fleet._round(percentile(windows, 50), 2),
        "reconnect_window_max_s": fleet._round(max(windows, default=None), 2),
        "cpu_percent_of_a_core": shares.read(),
    }
    if recordings is not None:
        result["profile"] = await asyncio.to_thread(recordings.finish)
    await victim.start()  # as systemd's Restart= would; takes whoever could not get back
    return result


async def settle(workers: list[Worker], n: int, timeout: float) -> dict[str, Any]:
    """Emitting stops; until every outbox is acknowledged and every agent online."""
    await on_all(workers, "set_emitting", on=False)
    started = time.monotonic()
    status = await fleet_status(workers)
    while (status["pending"] or status["online"] < n) and time.monotonic() - started < timeout:
        await asyncio.sleep(0.5)
        status = await fleet_status(workers)
    return {**status, "seconds": round(time.monotonic() - started, 1)}


async def count_events(workers: list[Worker], database_url: str) -> dict[str, int]:
    emitted: dict[str, list[int]] = {}
    for part in await on_all(workers, "emitted"):
        emitted.update(part)
    stored = await soak_mod.stored_events(database_url)
    return {
        "emitted": sum(len(seqs) for seqs in emitted.values()),
        "stored": sum(len(v) for v in stored.values()),
        "missing": sum(len(set(seqs) - set(stored.get(i, []))) for i, seqs in emitted.items()),
        "duplicated": sum(len(seqs) - len(set(seqs)) for seqs in stored.values()),
    }


# ============================================================================= the run
async def run(args: argparse.Namespace, root: Path, children: fleet.Children) -> dict[str, Any]:
    loop, main_task = asyncio.get_running_loop(), asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    n, n_workers, n_proxies = args.agents, args.workers, args.proxies
    haproxy = await asyncio.to_thread(ensure_haproxy)
    results: dict[str, Any] = {
        "agents": n, "heartbeat_interval_s": args.heartbeat_interval,
        "health_check": "health port" if args.health_port else "TLS handshake",
        "event_every_s": args.event_every, "machine": fleet.machine_info(),
        "source": fleet.source_info(),
        "haproxy": subprocess.run([haproxy, "-v"], capture_output=True, text=True,
                                  timeout=30).stdout.splitlines()[0],
        "layout": {"workers": n_workers, "proxies": n_proxies, "nofile": args.nofile},
        "timeouts_s": {k: getattr(args, f"{k}_timeout") for k in
                       ("enroll", "connect", "failover", "settle")},
    }
    database_url, db_name = await fleet.create_pg_database(args.database)
    processes: list[ServeProc] = []
    workers: list[Worker] = []
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
                                       first.ca_pem, database_url, args.health_port))
        await asyncio.gather(*(proc.start() for proc in processes))
        config = root / "haproxy.cfg"
        share = math.ceil(n / n_proxies)
        config.write_text(haproxy_config(
            f"127.0.0.1:{proxy_port}",
            [proc.backend for proc in processes],
            str(datadir.ca_file), heartbeat_interval=args.heartbeat_interval,
            maxconn=min(share + max(500, share // 4), (args.nofile - FD_MARGIN) // 2),
            # What one coordinator can hold, shared by the K proxies: a survivor takes agents
            # back up to its open-files limit, the rest queue in HAProxy.
            server_maxconn=(args.nofile - FD_MARGIN) // n_proxies))
        proxies = [children.start([haproxy, "-db", "-f", str(config)], root / f"haproxy{i}.log")
                   for i in range(1, n_proxies + 1)]
        for proxy in proxies:
            await fleet.wait_for_port(proxy_port, proxy)
        await asyncio.sleep(2)  # both servers pass their first health checks
        not_listening = [p.pid for p in proxies if not listens(p.pid, proxy_port)]
        if not_listening:
            raise RuntimeError(f"haproxy {not_listening} not listening on {proxy_port} (SO_REUSEPORT?)")
        log(f"coordinators pid {processes[0].pid}, {processes[1].pid}; {n_proxies} haproxy "
            f"on {proxy_url}; {n_workers} simulator worker(s)")

        join = await asyncio.to_thread(processes[0].customer_join, "Scale Co", n)
        workers = await start_workers(n, n_workers, {
            "url": proxy_url, "ca_pem": first.ca_pem, "join": join,
            "event_every": args.event_every, "seed": args.seed,
            "concurrency": math.ceil(FLEET_CONCURRENCY / n_workers)})
        log(f"enrolling {n} agents through the proxy")
        results["enroll"] = await enroll(workers, n, args.enroll_timeout)
        log(f"enrolled in {results['enroll']['seconds']} s")
        connected = await connect(workers, n, args.connect_timeout)
        split = [proc.held() for proc in processes]
        per_proxy = [established(p.pid, proxy_port) for p in proxies]
        results["connect"] = {**connected, "held_per_process": split, "held_per_proxy": per_proxy}
        log(f"{connected['connected']}/{n} online in {connected['seconds']} s, split {split}, "
            f"per haproxy {per_proxy}")

        # Presence is written in batches: ping once every process's view says all online.
        results["online_in_db_s"] = await wait_online(processes[0], n, timeout=args.connect_timeout)
        results["ping"] = {}

        def roles() -> dict[str, list[int]]:
            return {"coordinators": [proc.pid for proc in processes],
                    "simulators": [w.proc.pid for w in workers],
                    "haproxy": [proxy.pid for proxy in proxies], "postgres": postgres_pids()}

        for i, proc in enumerate(processes, 1):
            results["ping"][f"through_process_{i}"] = await ping_through(proc, roles)
            log(f"ping through process {i}: {results['ping'][f'through_process_{i}']}")
        # The same pings with the fleet's events paused and delivered: what the ping costs
        # without the run's synthetic event load (one per agent every --event-every s).
        await on_all(workers, "set_emitting", on=False)
        drained = await settle(workers, n, QUIET_DRAIN_TIMEOUT_S)
        results["quiet_ping"] = {"outboxes_pending": drained["pending"]}
        for i, proc in enumerate(processes, 1):
            results["quiet_ping"][f"through_process_{i}"] = await ping_through(proc, roles)
            log(f"quiet ping through process {i}: {results['quiet_ping'][f'through_process_{i}']}")
        await on_all(workers, "set_emitting", on=True)
        if args.profile:
            results["ping_profile"] = await profile_ping(processes, workers, Path(args.profile), roles)

        victim_index = 0 if split[0] >= split[1] else 1
        victim, survivor = processes[victim_index], processes[1 - victim_index]
        log(f"kill -9 process {victim_index + 1} (pid {victim.pid}, {split[victim_index]} agents)")
        profile = None if not args.profile else {
            "survivor": survivor.pid, **{f"simulator_{w.index}": w.proc.pid for w in workers}}
        results["failover"] = await failover(victim, workers, args.failover_timeout, roles,
                                             profile, Path(args.profile) if args.profile else None)
        results["failover"]["held_after_by_survivor"] = survivor.held()
        log(f"failover: {results['failover']}")

        settled = await settle(workers, n, args.settle_timeout)
        results["settle_s"] = settled["seconds"]
        results["events"] = {**await count_events(workers, database_url),
                             "undelivered_at_end": settled["pending"]}
        results["online_at_end"] = settled["online"]
        ping_p99 = [v.get("p99_s") for v in results["ping"].values()]
        results["ok"] = bool(
            connected["connected"] == n
            and all(v.get("answers_with_rtt") == n for v in results["ping"].values())
            and all(p is not None and p <= TARGET_PING_P99_S for p in ping_p99)
            and results["failover"]["back_95_s"] is not None
            and results["failover"]["back_95_s"] <= TARGET_BACK_95_S
            and results["events"]["missing"] == 0 and results["events"]["duplicated"] == 0)
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        for proc in processes:
            proc.stop()
        children.kill_all()
        with contextlib.suppress(Exception):
            await fleet.drop_pg_database(args.database, db_name)
    return results


def table(r: dict[str, Any]) -> str:
    c, f, e, lay = r["connect"], r["failover"], r["events"], r["layout"]
    lines = [
        f"scale-out: {r['agents']} agents, 2 coordinators on PostgreSQL behind {r['haproxy']}, "
        f"{r['machine']['nproc']} cores, heartbeat {r['heartbeat_interval_s']:g} s",
        f"  layout    {lay['proxies']} haproxy process(es), {lay['workers']} simulator worker(s) "
        f"(RLIMIT_NOFILE {lay['nofile']})",
        f"  enroll    {r['enroll']['seconds']} s ({r['enroll']['rate_per_s']}/s)",
        f"  connect   {c['connected']}/{r['agents']} through the proxy in {c['seconds']} s "
        f"({c['rate_per_s']}/s), held per process {c['held_per_process']}, "
        f"per haproxy {c['held_per_proxy']}",
    ]
    pings = [*r["ping"].items(),
             *((f"{k}, events paused", v) for k, v in r["quiet_ping"].items() if k != "outboxes_pending")]
    for name, ping in pings:
        lines.append(f"  ping      {name}: {ping.get('answers_with_rtt')} answered, "
                     f"p50 {ping.get('p50_s')} s, p99 {ping.get('p99_s')} s "
                     f"(target <= {TARGET_PING_P99_S:g} s), call {ping.get('call_seconds')} s "
                     f"{ping.get('error') or ''}".rstrip())
    lines += [
        f"  failover  kill -9 cut {f['agents_cut']} agents: 95% back in {f['back_95_s']} s, all in "
        f"{f['back_100_s']} s (target 95% <= {TARGET_BACK_95_S:g} s); survivor holds "
        f"{f['held_after_by_survivor']}; their reconnect window p50 "
        f"{f['reconnect_window_p50_s']} s, max {f['reconnect_window_max_s']} s",
        f"  events    {e['emitted']} emitted, {e['stored']} stored, {e['missing']} missing, "
        f"{e['duplicated']} duplicated (settled in {r['settle_s']} s)",
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
    parser.add_argument("--workers", type=int, default=0,
                        help="simulator processes (default: the fewest under RLIMIT_NOFILE)")
    parser.add_argument("--proxies", type=int, default=0,
                        help="HAProxy processes on the one port (default: the fewest under it)")
    for phase, per_agent in TIMEOUT_PER_AGENT_S.items():
        parser.add_argument(f"--{phase}-timeout", type=float, default=0.0,
                            help=f"seconds (default max({MIN_TIMEOUT_S:g}, {per_agent:g} x agents))")
    parser.add_argument("--health-port", action="store_true",
                        help="HAProxy checks each process's health port (serve --health-listen) "
                        "instead of a TLS handshake on its agents' port")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    parser.add_argument("--profile", default="", metavar="DIR",
                        help="after the measured pings, ping again with py-spy recording "
                        "both coordinators into DIR")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it (end of input)
        fleet.raise_nofile()
        tune_gc()  # as fleet.run_and_report: the simulator's collector must not cap it
        try:
            import uvloop
        except ImportError:
            asyncio.run(worker_main())
        else:
            uvloop.run(worker_main())
        return 0
    if args.agents < 1:
        parser.error("--agents must be at least 1")
    if not args.database.startswith("postgresql"):
        parser.error("--database must be a postgresql:// URL")
    if args.workers < 0 or args.proxies < 0:
        parser.error("--workers and --proxies must not be negative")
    soft, hard = fleet.raise_nofile()
    args.nofile = soft
    args.workers, args.proxies = layout(args.agents, soft, args.workers, args.proxies)
    if args.agents > 2 * (soft - FD_MARGIN):
        parser.error(f"RLIMIT_NOFILE is {soft} (hard {hard}): two coordinators cannot hold "
                     f"{args.agents} agents")
    for phase, per_agent in TIMEOUT_PER_AGENT_S.items():
        name = f"{phase}_timeout"
        setattr(args, name, getattr(args, name) or max(MIN_TIMEOUT_S, per_agent * args.agents))
    return fleet.run_and_report(args, "careline-scale-out-", run, table)


if __name__ == "__main__":
    sys.exit(main())
