"""Update fan-out benchmark (issue 6).

    python bench/update_fanout.py [--agents 500] [--size-mb 20] [--json]

Starts a real coordinator (`careline init` + `careline serve`, SQLite, TLS) in a temporary
data dir, creates release keys, builds and publishes a package of --size-mb incompressible
bytes, enrolls --agents simulated agents through /enroll, connects them all (challenge-signed
hello), then runs `push update --customer` and times each agent to "installed".

Each simulated agent speaks the real update protocol: it receives the InstallPackage
command, checks the signed instruction with the key it got at enrollment, fetches
timestamp.json (FetchMetadata), downloads the package in chunks (Download/Chunk), reports
`update_result` through an Event and counts as installed when the coordinator acks it. It
does not unpack anything (that is the installer's local cost, not the coordinator's).

Baseline, in the same run: a bare websockets TLS server (same certificate, loop, serve()
options) streams the same file in chunks of the same size to the same number of clients, no
protocol, no storage. Printed: aggregate MB/s of both and their ratio, the coordinator's
peak RSS during the fan-out, and p50/p99 time from the push to installed.

Everything listens on 127.0.0.1; every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from loopback import allow_one_address, free_port, stop_processes, wait_for_port
from measure import PeakRSS

PYTHON = sys.executable
TARGET_RATIO = 0.5
TARGET_RSS_MB = 300


def cli(data: Path, *args: str) -> Any:
    out = subprocess.run([PYTHON, "-m", "careline.coordinator.cli", *args, "--data", str(data), "--json"],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout) if out.stdout.strip() else None


def push(data: Path) -> None:
    from careline.coordinator.client import AdminClient, resolve_credentials

    with AdminClient(resolve_credentials(None, None, None, str(data)), timeout=120) as client:
        client.call("push.update", customer="Bench", version="2.0")


# ----------------------------------------------------------------------------- baseline server
async def baseline_server(pki: str, port: int, path: str) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    from careline.coordinator.pki import server_context
    from careline.coordinator.updates import SEND_CHUNK
    from careline.shared import protocol as p

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        with open(path, "rb") as f:
            while data := f.read(SEND_CHUNK):
                await ws.send(data)
        await ws.recv()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(handler, "127.0.0.1", port, ssl=server_context(Path(pki)),
                     compression=None, max_size=p.MAX_ADMIN_MESSAGE_BYTES, ping_interval=None):
        await stop.wait()


# ----------------------------------------------------------------------------- simulated agents
class SimAgent:
    def __init__(self, index: int) -> None:
        from careline.shared.keys import generate_key

        self.index = index
        self.key = generate_key()
        self.agent_id = ""
        self.instruction_key = b""
        self.received = 0
        self.installed_at: float | None = None
        self.connected = asyncio.Event()
        self.error = ""
        self.commands = 0  # InstallPackage commands received (the coordinator may re-send)


async def enroll(agent: SimAgent, url: str, token: str) -> None:
    from websockets.asyncio.client import connect

    from careline.shared import protocol as p
    from careline.shared.keys import public_bytes
    from careline.shared.tls import first_contact_context

    async with connect(url + p.ENROLL_PATH, ssl=first_contact_context(), compression=None,
                       max_size=p.MAX_MESSAGE_BYTES) as ws:
        p.decode(await ws.recv(), p.ServerIdentity)
        await ws.send(p.encode(p.EnrollRequest(
            token=token, public_key=public_bytes(agent.key), hostname=f"sim-{agent.index}",
            os="bench", agent_version="bench", products=["bench"])))
        enrolled = p.decode(await ws.recv(), p.Enrolled)
    agent.agent_id = enrolled.agent_id
    agent.instruction_key = enrolled.instruction_key


def _health() -> Any:
    from careline.shared import protocol as p

    return p.Health(cpu_percent=0.0, memory_total=1, memory_used=0, memory_percent=0.0,
                    disks=[], boot_time=0.0, uptime=1.0, os="bench", agent_version="bench",
                    products=[p.ProductHealth(name="bench", version="1.0", running=False)])


async def run_agent(agent: SimAgent, url: str, ctx: ssl.SSLContext, t0: list[float]) -> None:
    """The agent's download protocol through its own session core (AgentSession): the
    metadata request, Download and chunk offsets, the result event and its ack."""
    import datetime as dt

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from websockets.asyncio.client import connect

    from careline.agent.runner import Link, handshake
    from careline.shared import protocol as p
    from careline.shared.instruction import verify_instruction
    from careline.shared.keys import sign_challenge
    from careline.shared.session import (
        Acked,
        AgentSession,
        ChunkReceived,
        CommandReceived,
        MetadataReplied,
    )

    key = Ed25519PublicKey.from_public_bytes(agent.instruction_key)
    async with connect(url + p.AGENT_PATH, ssl=ctx, compression=None, open_timeout=120,
                       max_size=p.MAX_MESSAGE_BYTES, ping_interval=None) as ws:
        session = AgentSession(
            agent.agent_id, "bench",
            lambda nonce: sign_challenge(agent.key, nonce, agent.agent_id), time.monotonic(),
            handshake_timeout=120)
        link = Link(ws, session)
        await handshake(link)
        agent.connected.set()

        async def heartbeats() -> None:
            while True:
                session.send_heartbeat(_health(), time.monotonic())
                await link.flush()
                await asyncio.sleep(20)

        beat = asyncio.create_task(heartbeats())
        length = job = None
        try:
            async for data in ws:
                for event in session.receive(data, time.monotonic()):
                    if isinstance(event, CommandReceived) and isinstance(
                            event.command.action, p.InstallPackage):
                        agent.commands += 1
                        instr = verify_instruction(key, event.command.action.instruction,
                                                   agent.agent_id, dt.datetime.now(dt.UTC))
                        session.answer(p.CommandResult(id=event.command.id, ok=True))
                        if job == instr.job_id:
                            # A re-sent command for the job under way: as agent/updater.py
                            # does, resume the download from the bytes we have (the
                            # coordinator replaces its stream), never start over.
                            if length is not None and agent.received < length:
                                session.download(job, agent.received)
                        else:
                            job, length = instr.job_id, instr.length
                            session.fetch_metadata("timestamp.json", time.monotonic(), 30.0)
                    elif isinstance(event, MetadataReplied):
                        assert event.data
                        assert job is not None
                        session.download(job, 0)
                    elif isinstance(event, ChunkReceived):
                        if event.chunk.error:
                            raise RuntimeError(event.chunk.error)
                        agent.received += len(event.chunk.data)
                        if agent.received == length:
                            session.end_download(event.chunk.job)
                            session.send_event(p.Event(
                                seq=1, kind="update_result", at=time.time(),
                                data={"job": job, "outcome": "installed", "product": "bench",
                                      "version": "2.0"}))
                    elif isinstance(event, Acked) and 1 in event.seqs:
                        agent.installed_at = time.monotonic() - t0[0]
                        return
                await link.flush()
        finally:
            beat.cancel()


async def baseline_client(agent: SimAgent, url: str, ctx: ssl.SSLContext, length: int,
                          t0: list[float]) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, ssl=ctx, compression=None, max_size=1 << 21, open_timeout=120,
                       ping_interval=None) as ws:
        agent.connected.set()
        while not t0[0]:
            await asyncio.sleep(0.05)
        await ws.send(b"go")
        async for data in ws:
            agent.received += len(data)
            if agent.received >= length:
                agent.installed_at = time.monotonic() - t0[0]
                await ws.send(b"done")
                return


async def connect_all(agents: list[SimAgent], start: Any) -> list[asyncio.Task[None]]:
    sem = asyncio.Semaphore(50)

    async def one(agent: SimAgent) -> None:
        async with sem:
            task = asyncio.create_task(start(agent))
            tasks.append(task)
            waiter = asyncio.create_task(agent.connected.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done() and task.exception():
                raise task.exception()  # type: ignore[misc]

    tasks: list[asyncio.Task[None]] = []
    await asyncio.gather(*(one(a) for a in agents))
    return tasks


def summary(agents: list[SimAgent], length: int, elapsed: float) -> dict[str, Any]:
    times = sorted(a.installed_at for a in agents if a.installed_at is not None)
    total = sum(a.received for a in agents)
    return {
        "completed": len(times), "bytes": total, "seconds": round(elapsed, 2),
        "install_commands": sum(a.commands for a in agents),
        "mb_per_s": round(total / elapsed / 1e6, 1),
        "p50_s": round(statistics.median(times), 2) if times else None,
        "p99_s": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2) if times else None,
    }


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from careline.shared.tls import pinned_client_context

    data = work / "coordinator"
    port = free_port()
    subprocess.run([PYTHON, "-m", "careline.coordinator.cli", "init", "--data", str(data), "--listen",
                    f"127.0.0.1:{port}", "--heartbeat-interval", "30", "--json"],
                   capture_output=True, check=True, timeout=120)
    allow_one_address(data)
    procs: list[subprocess.Popen[Any]] = []
    try:
        with open(work / "serve.log", "w") as log:
            server = subprocess.Popen(
                [PYTHON, "-m", "careline.coordinator.cli", "serve", "--data", str(data)],
                stdout=subprocess.DEVNULL, stderr=log)
        procs.append(server)
        wait_for_port(port, server)
        cli(data, "release", "keys", "init", "--keys", str(work / "keys"))
        src = work / "src"
        (src / "bin").mkdir(parents=True)
        (src / "bin" / "blob.bin").write_bytes(os.urandom(int(args.size_mb * 1e6)))
        package = work / "bench-2.0.careline"
        subprocess.run([PYTHON, "-m", "careline.coordinator.cli", "release", "build", str(src),
                        "--product", "bench", "--version", "2.0", "--kind", "feature",
                        "--out", str(package)], check=True, capture_output=True)
        row = cli(data, "release", "publish", str(package), "--keys", str(work / "keys"))
        length = int(row["length"])
        cli(data, "customers", "add", "Bench")
        join = cli(data, "tokens", "create", "--customer", "Bench", "--uses",
                   str(args.agents))["join"]
        from careline.shared.keys import JoinString

        parsed = JoinString.parse(join)
        url = parsed.server_url
        agents = [SimAgent(i) for i in range(args.agents)]
        sem = asyncio.Semaphore(20)

        async def enroll_one(agent: SimAgent) -> None:
            async with sem:
                await enroll(agent, url, parsed.token)

        await asyncio.gather(*(enroll_one(a) for a in agents))
        ctx = pinned_client_context((data / "pki" / "ca.pem").read_text())

        # --- the real thing
        t0 = [0.0]
        tasks = await connect_all(agents, lambda a: run_agent(a, url, ctx, t0))
        with PeakRSS(server.pid) as rss:
            idle_rss = psutil.Process(server.pid).memory_info().rss
            t0[0] = time.monotonic()
            await asyncio.to_thread(push, data)
            await asyncio.wait_for(asyncio.gather(*tasks), args.timeout)
            elapsed = time.monotonic() - t0[0]
        real = summary(agents, length, elapsed)
        real["peak_rss_mb"] = round(rss.peak / 1e6, 1)
        real["rss_before_push_mb"] = round(idle_rss / 1e6, 1)

        # --- bare websockets baseline: same bytes, same chunk size, same client count
        bport = free_port()
        stored = data / "releases" / "packages" / row["sha256"][:2] / row["sha256"]
        base = subprocess.Popen(
            [PYTHON, __file__, "--baseline-server", str(data / "pki"), str(bport), str(stored)],
            stdout=subprocess.DEVNULL)
        procs.append(base)
        wait_for_port(bport, base)
        bagents = [SimAgent(i) for i in range(args.agents)]
        t1 = [0.0]
        btasks = await connect_all(
            bagents, lambda a: baseline_client(a, f"wss://127.0.0.1:{bport}/", ctx, length, t1))
        t1[0] = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*btasks), args.timeout)
        bare = summary(bagents, length, time.monotonic() - t1[0])
        return {
            "agents": args.agents, "package_bytes": length, "coordinator": real,
            "bare_websockets": bare,
            "ratio": round(real["mb_per_s"] / bare["mb_per_s"], 2),
            "targets": {"ratio": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
        }
    finally:
        stop_processes(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--size-mb", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline-server", nargs=3, metavar=("PKI", "PORT", "FILE"))
    args = parser.parse_args()
    if args.baseline_server:
        pki, port, path = args.baseline_server
        run = _loop_runner()
        run(baseline_server(pki, int(port), path))
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.agents + 256)), hard))
    work = Path(tempfile.mkdtemp(prefix="careline-fanout-"))
    try:
        result = _loop_runner()(bench(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    real, bare = result["coordinator"], result["bare_websockets"]
    print(f"{result['agents']} agents x {result['package_bytes'] / 1e6:.1f} MB")
    print(f"coordinator      {real['mb_per_s']:8.1f} MB/s  ({real['completed']} installed in "
          f"{real['seconds']} s)")
    print(f"bare websockets  {bare['mb_per_s']:8.1f} MB/s  ({bare['seconds']} s)")
    print(f"ratio            {result['ratio']:8.2f}     (target >= {TARGET_RATIO})")
    print(f"peak RSS         {real['peak_rss_mb']:8.1f} MB  (target < {TARGET_RSS_MB} MB; "
          f"{real['rss_before_push_mb']} MB before the push)")
    print(f"time to installed p50 {real['p50_s']} s, p99 {real['p99_s']} s")


def _loop_runner() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


if __name__ == "__main__":
    main()
