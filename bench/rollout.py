"""Regulation rollout over a simulated fleet (issue 7).

    python bench/rollout.py [--agents 2000] [--customers 20] [--install-seconds 1] [--json]

Starts a real coordinator (`careline init` + `careline serve`, SQLite, TLS) in a temporary
data dir, creates --customers customers each with a contract (12-month warranty signed 10
days ago: covered for regulation updates), creates the release keys (`careline release keys
init`), builds a tiny regulation package (`careline release build --kind regulation
--regulation-ref --effective` 30 days ahead), enrolls --agents simulated agents (tokens
bound to each customer's contract) and connects them with bench/fleet.py's simulator.
Every agent reports KeToanPro 5.2.1, not running, in its heartbeats, so each is a target of
5.3.0. Then `careline release publish` starts the rollout by itself and the default wave
rules apply (5 / 25 / 100 %, a wave passes at 95 % success, ticks every 2 s).

Each simulated agent speaks the real update protocol (agent/updater.py) for what the
coordinator sees: on Command(InstallPackage) it checks the signed instruction with the key
it got at enrollment, answers CommandResult(accepted), fetches the TUF metadata the real
agent's refresh fetches (2.root.json, timestamp.json, N.snapshot.json, M.targets.json),
downloads the package over the websocket (Download/Chunk) and checks its sha256 and length
against the instruction, then reports durable Events update_step downloading / verifying /
installing and update_result installed (kept until acked, re-sent on a new connection)
after --install-seconds (x0.5-1.5 jitter) of simulated install. What it skips: the TUF
signature checks of that metadata (python-tuf in 2,000 agents would measure the
simulator, not the coordinator) and unpacking the package.

Printed: time from publish to 95 % of the targets installed by rollout_machines state (as
`rollouts.show` reports it, polled every --poll s, and exactly from the stored finished_at
times), per-wave times (sent, 95 % and 100 % succeeded), the publish call's own time (it
targets every machine inside it), coordinator CPU % and peak RSS from publish to the end.

Everything listens on 127.0.0.1; every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet  # bench/fleet.py: the simulator and the process helpers
import pyspy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from measure import PeakRSS
from websockets.exceptions import ConnectionClosed

from careline.agent.runner import Link
from careline.shared import protocol as p
from careline.shared.errors import CarelineError
from careline.shared.instruction import verify_instruction
from careline.shared.session import Acked, AgentEvent, ChunkReceived, CommandReceived, MetadataReplied

PYTHON = sys.executable
PRODUCT = "KeToanPro"
OLD_VERSION = "5.2.1"
NEW_VERSION = "5.3.0"
FETCH_TIMEOUT = 30.0  # agent/updater.py
CHUNK_TIMEOUT = 60.0
log = fleet.log


class RolloutStats:
    """Shared by every simulated agent of one run."""

    def __init__(self, install_seconds: float, steps: bool) -> None:
        self.install_seconds = install_seconds
        self.steps = steps
        self.commands = 0
        self.installed_at: dict[str, float] = {}  # agent id -> time.time() result acked
        self.command_at: dict[str, float] = {}  # agent id -> time.time() first InstallPackage
        self.errors: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class RolloutAgent(fleet.SimAgent):
    """fleet.SimAgent plus the agent's update protocol and product version: metadata ids,
    chunk offsets and the events window are its AgentSession's, as in agent/updater.py."""

    stats: RolloutStats  # set before the fleet is made

    def __init__(self, sim: fleet.SimState, identity: fleet.Identity) -> None:
        super().__init__(sim, identity)
        self.version = OLD_VERSION
        self.key = Ed25519PublicKey.from_public_bytes(identity.instruction_key)
        self.result_seqs: set[int] = set()
        self.active: dict[str, asyncio.Task[None]] = {}
        self.done: dict[str, dict[str, Any]] = {}
        # (connection, request id) -> its reply: ids are the session's, per connection
        self.fetches: dict[tuple[Link, int], asyncio.Future[bytes | None]] = {}
        self.download: tuple[str, bytearray, int, asyncio.Event] | None = None

    # ------------------------------------------------------------------ session
    def _health(self) -> p.Health:
        health = super()._health()
        health.products = [p.ProductHealth(PRODUCT, self.version, False, None)]
        return health

    async def _on_event(self, event: AgentEvent) -> None:
        assert self.link is not None
        if isinstance(event, Acked):
            for seq in event.seqs:
                if seq in self.result_seqs:
                    self.result_seqs.discard(seq)
                    self.stats.installed_at.setdefault(self.identity.agent_id, time.time())
        if isinstance(event, MetadataReplied):
            future = self.fetches.get((self.link, event.id))
            if future is not None and not future.done():
                future.set_result(event.data)
        elif isinstance(event, ChunkReceived):
            self._on_chunk(event.chunk)
        elif isinstance(event, CommandReceived) and isinstance(event.command.action,
                                                               p.InstallPackage):
            await self._on_install(self.link, event.command)
        else:
            await super()._on_event(event)

    # ------------------------------------------------------------------ update protocol
    async def _on_install(self, link: Link, command: p.Command) -> None:
        stats = self.stats
        stats.commands += 1
        stats.command_at.setdefault(self.identity.agent_id, time.time())
        job = command.action.job  # type: ignore[union-attr]
        try:
            instr = verify_instruction(self.key, command.action.instruction,  # type: ignore[union-attr]
                                       self.identity.agent_id, dt.datetime.now(dt.UTC))
        except CarelineError as exc:
            stats.error(f"instruction: {exc}")
            result = {"job": job, "outcome": "refused", "product": None, "version": None,
                      "reason": str(exc)}
            self.result_seqs.add(self.emit("update_result", result))
            return
        link.session.answer(p.CommandResult(id=command.id, ok=True, data={"accepted": job}))
        with contextlib.suppress(ConnectionClosed):
            await link.flush()
        if job in self.done:  # finished before; the coordinator has not heard yet
            self.result_seqs.add(self.emit("update_result", self.done[job]))
            return
        if job in self.active:
            if self.download is not None and self.download[0] == job:
                link.session.download(job, len(self.download[1]))
                await link.flush()
            return
        task = asyncio.create_task(self._install(job, instr))
        self.active[job] = task
        stats.tasks.add(task)
        task.add_done_callback(stats.tasks.discard)
        task.add_done_callback(lambda _t: self.active.pop(job, None))

    async def _fetch(self, name: str) -> bytes | None:
        link = self.link
        if link is None:
            raise ConnectionError("not connected")
        key = (link, link.session.fetch_metadata(name, time.monotonic(), FETCH_TIMEOUT))
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.fetches[key] = future
        try:
            await link.flush()
            return await asyncio.wait_for(future, FETCH_TIMEOUT)
        finally:
            self.fetches.pop(key, None)

    def _on_chunk(self, chunk: p.Chunk) -> None:
        if self.download is None or chunk.job != self.download[0]:
            return
        _job, buffer, _length, progress = self.download
        if chunk.error:
            self.stats.error(f"chunk: {chunk.error}")
        else:  # at the offset asked for: the session checked
            buffer += chunk.data
        progress.set()

    async def _install(self, job: str, instr: Any) -> None:
        stats = self.stats
        try:
            # AgentTrust.refresh: next root (none), timestamp, snapshot, targets
            await self._fetch("2.root.json")
            timestamp = await self._fetch("timestamp.json")
            if timestamp is None:
                raise ConnectionError("no timestamp.json")
            snap_v = json.loads(timestamp)["signed"]["meta"]["snapshot.json"]["version"]
            snapshot = await self._fetch(f"{snap_v}.snapshot.json")
            targets_v = json.loads(snapshot or b"{}")["signed"]["meta"]["targets.json"]["version"]
            await self._fetch(f"{targets_v}.targets.json")
            if stats.steps:
                self.emit("update_step", {"job": job, "step": "downloading",
                                          "detail": f"from byte 0 of {instr.length}"})
            buffer, progress = bytearray(), asyncio.Event()
            self.download = (job, buffer, instr.length, progress)
            link = self.link
            assert link is not None
            link.session.download(job, 0)
            await link.flush()
            while len(buffer) < instr.length:
                await asyncio.wait_for(progress.wait(), CHUNK_TIMEOUT)
                progress.clear()
            self.download = None
            if len(buffer) != instr.length or hashlib.sha256(buffer).hexdigest() != instr.sha256:
                raise ValueError("package does not match the instruction")
            if stats.steps:
                self.emit("update_step", {"job": job, "step": "verifying", "detail": None})
                self.emit("update_step", {"job": job, "step": "installing", "detail": None})
            await asyncio.sleep(stats.install_seconds * self.sim.rng.uniform(0.5, 1.5))
            self.version = instr.version
            result = {"job": job, "outcome": "installed", "product": instr.product,
                      "version": instr.version, "reason": None}
            self.done[job] = result
            self.result_seqs.add(self.emit("update_result", result))
        except (TimeoutError, ConnectionClosed, ConnectionError, OSError) as exc:
            stats.error(f"interrupted: {type(exc).__name__}")  # resumes when re-sent
        except Exception as exc:
            stats.error(f"failed: {exc!r}")
            result = {"job": job, "outcome": "failed", "product": instr.product,
                      "version": instr.version, "reason": repr(exc)}
            self.done[job] = result
            self.result_seqs.add(self.emit("update_result", result))
        finally:
            if self.download is not None and self.download[0] == job:
                self.download = None
            if self.link is not None:
                self.link.session.end_download(job)


# ============================================================================= measuring
def parse_utc(value: str | None) -> float | None:
    if value is None:
        return None
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp()


def stored_times(db_path: Path, rollout_id: int) -> dict[str, Any]:
    """rollout_machines (wave, state, sent_at, finished_at) and when each job part was
    recorded installed, read with plain sqlite3 (read-only)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        machines = conn.execute(
            "SELECT rm.wave, rm.state, rm.sent_at, rm.finished_at, jm.finished_at, jm.status,"
            " rm.agent_id"
            " FROM rollout_machines rm LEFT JOIN job_machines jm"
            " ON jm.job_id = rm.job_id AND jm.agent_id = rm.agent_id"
            " WHERE rm.rollout_id = ?", (rollout_id,)).fetchall()
        received = [parse_utc(r[0]) for r in conn.execute(
            "SELECT received_at FROM events WHERE kind IN ('update_step', 'update_result')")]
    finally:
        conn.close()
    return {"machines": [(w, s, parse_utc(a), parse_utc(b), parse_utc(c), st, agent)
                         for w, s, a, b, c, st, agent in machines],
            "events": sorted(t for t in received if t is not None)}


def event_rate(times: list[float], window: float = 10.0) -> dict[str, Any]:
    """Update events the coordinator stored: how many, and the most per second over any
    `window` seconds (its ingestion rate while agents were waiting for acks)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return {"stored": len(times), f"peak_per_s_over_{window:.0f}s": round(best / window, 1)}


def nth(values: list[float], share: float, total: int) -> float | None:
    """The time by which `share` of `total` had happened (None if it never did)."""
    need = max(1, math.ceil(share * total))
    ordered = sorted(values)
    return ordered[need - 1] if len(ordered) >= need else None


def wave_figures(rows: list[tuple[Any, ...]], t0: float, stats: RolloutStats,
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per wave, relative to the start of publish: sent_s = the tick that created its job
    (rollout_machines.sent_at, the tick's start time); commands_95_s = 95% of its agents
    had the InstallPackage command; acked_95_s = 95% had their update_result acked (stored
    and job part moved on); succeeded_95_s = rollout_machines.finished_at, which is the
    start time of the tick that settled them (that tick commits later)."""
    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 2)

    waves = sorted({r[0] for r in rows if r[0] is not None})
    out = []
    for wave in waves:
        mine = [r for r in rows if r[0] == wave]
        sent = [r[2] for r in mine if r[2] is not None]
        done = [r[3] for r in mine if r[1] == "succeeded" and r[3] is not None]
        recorded = [r[4] for r in mine if r[5] == "installed" and r[4] is not None]
        first_sent = min(sent) if sent else None
        t95 = nth(done, 0.95, len(mine))
        commands = [stats.command_at[r[6]] for r in mine if r[6] in stats.command_at]
        acked = [stats.installed_at[r[6]] for r in mine if r[6] in stats.installed_at]
        out.append({
            "wave": wave + 1, "machines": len(mine), "sent_s": rel(first_sent),
            "succeeded": len(done),
            "commands_95_s": rel(nth(commands, 0.95, len(mine))),
            "acked_95_s": rel(nth(acked, 0.95, len(mine))),
            "succeeded_95_s": rel(t95), "succeeded_100_s": rel(nth(done, 1.0, len(mine))),
            "installed_recorded_95_s": rel(nth(recorded, 0.95, len(mine))),
            "wave_duration_to_95_s": None if t95 is None or first_sent is None
            else round(t95 - first_sent, 2),
        })
    targeted = [r for r in rows if r[0] is not None]
    done = [r[3] for r in targeted if r[1] == "succeeded" and r[3] is not None]
    recorded = [r[4] for r in targeted if r[5] == "installed" and r[4] is not None]
    overall = {
        "targeted": len(targeted), "not_covered": len(rows) - len(targeted),
        "succeeded": len(done),
        "publish_to_95_succeeded_s": rel(nth(done, 0.95, len(targeted))),
        "publish_to_100_succeeded_s": rel(nth(done, 1.0, len(targeted))),
        "publish_to_95_installed_recorded_s": rel(nth(recorded, 0.95, len(targeted))),
    }
    return out, overall


# ============================================================================= the run
def cli(coord: fleet.CoordinatorProc | None, *args: str, timeout: float = 300) -> tuple[Any, float]:
    """`careline ARGS --json` (with --data when talking to the coordinator); (output, seconds)."""
    started = time.monotonic()
    data = ["--data", str(coord.data)] if coord is not None else []
    out = subprocess.run([PYTHON, "-m", "careline.coordinator.cli", *args, *data, "--json"],
                         capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(f"careline {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return (json.loads(out.stdout) if out.stdout.strip() else None), elapsed


async def run(args: argparse.Namespace, root: Path, children: fleet.Children) -> dict[str, Any]:
    loop, main_task = asyncio.get_running_loop(), asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    n, customers = args.agents, max(1, min(args.customers, args.agents))
    results: dict[str, Any] = {
        "agents": n, "customers": customers, "install_seconds": args.install_seconds,
        "update_steps": not args.result_only, "machine": fleet.machine_info(),
        "source": fleet.source_info(),
    }
    coord = await asyncio.to_thread(fleet.CoordinatorProc, children, root, "", 30.0)
    await coord.start()
    log(f"coordinator pid {coord.pid} on {coord.url}; data {coord.data}")
    today = dt.date.today()
    effective = today + dt.timedelta(days=args.effective_days)

    # ------------------------------------------------ customers, contracts, tokens
    shares = [n // customers + (1 if i < n % customers else 0) for i in range(customers)]

    def setup() -> list[str]:
        joins = []
        with coord.admin() as client:
            for i, share in enumerate(shares):
                name = f"Customer {i:03d}"
                client.call("customers.add", name=name)
                contract = client.call("contracts.add", customer=name,
                                       signed=(today - dt.timedelta(days=10)).isoformat(),
                                       warranty_months=12)
                joins.append(client.call("tokens.create", customer=name, uses=share,
                                         contract=contract["id"],
                                         expires_seconds=6 * 3600)["join"])
        return joins

    joins = await asyncio.to_thread(setup)
    keys = root / "release-keys"
    await asyncio.to_thread(cli, coord, "release", "keys", "init", "--keys", str(keys))
    src = root / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "ketoan.dll").write_bytes(os.urandom(args.package_kb * 1024))
    (src / "bin" / "forms-tt133.xml").write_text("<forms version='5.3.0'/>\n")
    package = root / f"{PRODUCT}-{NEW_VERSION}.careline"
    await asyncio.to_thread(
        cli, None, "release", "build", str(src), "--product", PRODUCT, "--version",
        NEW_VERSION, "--kind", "regulation", "--regulation-ref", "TT133/2026-bench",
        "--effective", effective.isoformat(), "--out", str(package))
    results["package_bytes"] = package.stat().st_size

    # ------------------------------------------------ enroll and connect
    identities = [fleet.Identity(fleet.generate_key()) for _ in range(n)]
    t = time.monotonic()
    start = 0
    for join, share in zip(joins, shares, strict=True):
        await fleet.enroll_all(fleet.JoinString.parse(join), identities[start:start + share],
                               args.enroll_concurrency, timeout=max(120, share * 0.2))
        start += share
    results["enroll_s"] = round(time.monotonic() - t, 1)
    log(f"enrolled {n} agents for {customers} customers in {results['enroll_s']} s")
    stats = RolloutStats(args.install_seconds, not args.result_only)
    RolloutAgent.stats = stats
    sim_fleet = fleet.Fleet(coord.url, coord.ca_pem, identities, bare=False,
                            concurrency=args.concurrency, seed=args.seed, agent_class=RolloutAgent)
    rss: PeakRSS | None = None
    recording: pyspy.Recording | None = None
    try:
        connected = await sim_fleet.connect_all(timeout=args.connect_timeout)
        if connected["connected"] < n:
            raise RuntimeError(f"only {connected['connected']}/{n} agents connected")
        results["connect"] = {k: connected[k] for k in ("seconds", "rate_per_s", "failures")}
        log(f"  connected at {connected['rate_per_s']}/s; waiting for every heartbeat stored")
        deadline = time.monotonic() + 60
        while len(await fleet.stored_heartbeats(coord.database_url)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("heartbeats of every agent not stored after 60 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # let the connect burst's dispatches and flushes settle

        # ------------------------------------------------ publish: the rollout starts
        rss = PeakRSS(coord.pid, interval=0.1).begin()
        if args.profile:
            recording = pyspy.Recording.start(coord.pid, args.timeout, Path(args.profile))
        meter = fleet.CpuMeter(coord.pid)
        t0 = time.time()
        log(f"publishing {PRODUCT} {NEW_VERSION} (regulation, effective {effective})")
        row, publish_s = await asyncio.to_thread(
            cli, coord, "release", "publish", str(package), "--keys", str(keys))
        rollout_id = int(row["rollout"])
        results["publish_call_s"] = round(publish_s, 2)
        log(f"  published in {publish_s:.1f} s; rollout {rollout_id}")

        show_t95: float | None = None
        status, polls = "", 0
        client = await asyncio.to_thread(coord.admin)
        try:
            deadline = t0 + args.timeout
            last_log = 0.0
            while time.time() < deadline:
                summary = await asyncio.to_thread(client.call, "rollouts.show", id=rollout_id)
                polls += 1
                status = summary["status"]
                targeted = sum(w["targeted"] for w in summary["waves"])
                succeeded = sum(w["succeeded"] for w in summary["waves"])
                if show_t95 is None and targeted and succeeded >= math.ceil(0.95 * targeted):
                    show_t95 = time.time() - t0
                if time.monotonic() - last_log > 10:
                    last_log = time.monotonic()
                    waves = " ".join(f"w{w['wave']}:{w['succeeded']}/{w['targeted']}"
                                     f"{'' if w['sent'] else '(held)'}" for w in summary["waves"])
                    log(f"  {time.time() - t0:5.1f} s {status}: {waves}; agents acked "
                        f"{len(stats.installed_at)}; errors {stats.errors or 'none'}")
                if status not in ("running",) or (targeted and succeeded == targeted):
                    break
                await asyncio.sleep(args.poll)
        finally:
            await asyncio.to_thread(client.close)
        elapsed = time.time() - t0
        cpu = meter.read()
        rss.stop()
        if recording is not None:
            results["profile"] = await asyncio.to_thread(recording.finish, 0.1)
            recording = None
        results["rollout"] = {
            "id": rollout_id, "status_at_end": status, "shows_polled": polls,
            "publish_to_95_succeeded_show_s": None if show_t95 is None else round(show_t95, 2),
            "measured_s": round(elapsed, 1),
            "coordinator_cpu_percent": cpu["server_cpu_percent"],
            "simulator_cpu_percent": cpu["simulator_cpu_percent"],
            "machine_cpu_percent": cpu["machine_cpu_percent"],
            "coordinator_rss_mb_before": round(rss.start / 2**20, 1),
            "coordinator_rss_mb_peak": round(rss.peak / 2**20, 1),
            "install_commands_received": stats.commands,
            "agent_errors": stats.errors,
            "agents_acked_95_s": None if (a := nth(list(stats.installed_at.values()), 0.95, n))
            is None else round(a - t0, 2),
        }
        stored = await asyncio.to_thread(stored_times, coord.data / "careline.db", rollout_id)
        results["waves"], overall = wave_figures(stored["machines"], t0, stats)
        results["rollout"]["update_events"] = event_rate(stored["events"])
        results["rollout"].update(overall)
    finally:
        if rss is not None:
            rss.stop()
        if recording is not None:
            recording.stop()
        for task in list(stats.tasks):
            task.cancel()
        sim_fleet.sim.stopping = True
        await asyncio.to_thread(coord.stop)
        await sim_fleet.close()
    t95 = results["rollout"]["publish_to_95_succeeded_s"]
    results["targets"] = {"note": "no issue target; reported for issue 7",
                          "reached_95_percent": t95 is not None}
    return results


def table(r: dict[str, Any]) -> str:
    ro = r["rollout"]
    lines = [
        f"Careline regulation rollout: {r['agents']} simulated agents, {r['customers']} "
        f"customers, {r['package_bytes']} B package, install {r['install_seconds']} s "
        f"(x0.5-1.5), {r['machine']['nproc']} cores",
        f"  publish call            {r['publish_call_s']} s (targets every machine inside it)",
        f"  publish -> 95% installed {ro['publish_to_95_succeeded_s']} s by stored rollout_machines "
        f"({ro['publish_to_95_succeeded_show_s']} s as polled via rollouts.show; job parts "
        f"recorded installed at {ro['publish_to_95_installed_recorded_s']} s)",
        f"  publish -> 100%          {ro['publish_to_100_succeeded_s']} s; status at end "
        f"{ro['status_at_end']}; {ro['succeeded']}/{ro['targeted']} succeeded",
    ]
    for w in r["waves"]:
        lines.append(f"  wave {w['wave']}: {w['machines']:5d} machines, sent at {w['sent_s']} s, "
                     f"95% had the command at {w['commands_95_s']} s, 95% acked at "
                     f"{w['acked_95_s']} s, 95% succeeded at {w['succeeded_95_s']} s "
                     f"(wave took {w['wave_duration_to_95_s']} s to 95%)")
    lines.append(f"  update events stored: {ro['update_events']}")
    lines.append(f"  coordinator CPU {ro['coordinator_cpu_percent']}% of a core (simulator "
                 f"{ro['simulator_cpu_percent']}%), RSS {ro['coordinator_rss_mb_before']} -> "
                 f"peak {ro['coordinator_rss_mb_peak']} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--install-seconds", type=float, default=1.0,
                        help="simulated install time per agent (jittered x0.5-1.5)")
    parser.add_argument("--result-only", action="store_true",
                        help="send only update_result, not the three update_step events")
    parser.add_argument("--package-kb", type=int, default=16)
    parser.add_argument("--effective-days", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--enroll-concurrency", type=int, default=32)
    parser.add_argument("--connect-timeout", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds from publish before giving up on the rollout")
    parser.add_argument("--poll", type=float, default=2.0, help="rollouts.show period")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", default="", metavar="FILE",
                        help="py-spy record the coordinator from publish to the end into FILE "
                        "(raw collapsed stacks); a summary goes into the JSON")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.agents < 1:
        parser.error("--agents must be at least 1")
    soft, hard = fleet.raise_nofile()
    if soft < args.agents + 200:
        parser.error(f"RLIMIT_NOFILE is {soft} (hard {hard}); {args.agents} agents need more")
    return fleet.run_and_report(args, "careline-rollout-", run, table)


if __name__ == "__main__":
    sys.exit(main())
