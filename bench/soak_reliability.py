"""Soak (issue 13): simulated agents with random disconnects, a kill -9 and a SIGSTOP of
the coordinator; every event stored exactly once, every agent online at the end, and how
long agents took to notice the frozen coordinator.

Each simulated agent (bench/fleet.py's simulator) keeps an in-memory outbox delivered as
the real agent does (through its AgentSession: a bounded window, acks open it again),
emits an event every `--event-every` seconds on average whether connected or not, and runs
the real agent's keepalive (agent.runner.keepalive: a ping every heartbeat interval, given
up after two intervals without a frame or a pong). A chaos task drops random agents'
connections (`--disconnects` in all, spread over the run), kills the coordinator with -9 at
1/3 of the run and restarts it, and freezes it with SIGSTOP for `--freeze` seconds at 2/3.
At the end emitting stops, and the run waits until every agent's outbox is acknowledged and
every agent is online; then the coordinator's events table is compared with what each agent
emitted.

    python bench/soak_reliability.py [--agents 500 --duration 600 --disconnects 1000 --freeze 90]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import fleet  # bench/fleet.py: the simulator and the process helpers
import sqlalchemy as sa
from measure import percentile
from websockets.asyncio.client import ClientConnection

from careline.agent.runner import CoordinatorSilent, keepalive
from careline.coordinator.storage.db import Database
from careline.coordinator.storage.schema import events

log = fleet.log


class Soak:
    """What the chaos did and what the agents saw."""

    def __init__(self) -> None:
        self.emitting = True
        self.frozen_at: float | None = None  # monotonic time of the SIGSTOP
        self.noticed_after: list[float] = []  # seconds from SIGSTOP to each agent's giving up
        self.silent_detections = 0
        self.links: dict[str, ClientConnection] = {}  # agent id -> its open connection
        self.dropped = 0


class SoakAgent(fleet.SimAgent):
    soak: Soak
    soak_every: float  # mean seconds between events (--event-every)

    def __init__(self, sim: fleet.SimState, identity: fleet.Identity) -> None:
        super().__init__(sim, identity)
        self.emitted: list[int] = []
        self.emitter: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self.emitter = asyncio.create_task(self._emit_forever())
        try:
            await super().run()
        finally:
            self.emitter.cancel()
            await asyncio.gather(self.emitter, return_exceptions=True)

    async def _emit_forever(self) -> None:
        rng, every = self.sim.rng, self.soak_every
        while True:
            await asyncio.sleep(rng.expovariate(1 / every))
            if not self.soak.emitting:
                continue
            n = len(self.emitted) + 1
            self.emitted.append(self.emit("update_step", {"step": "soak", "n": n}))

    def _session_tasks(self, ws: ClientConnection) -> list[Any]:
        self.soak.links[self.identity.agent_id] = ws
        return [*super()._session_tasks(ws), self._keepalive(ws)]

    async def _keepalive(self, ws: ClientConnection) -> None:
        assert self.link is not None
        try:
            await keepalive(ws, self.link.session)
        except CoordinatorSilent:
            self.soak.silent_detections += 1
            if self.soak.frozen_at is not None:
                self.soak.noticed_after.append(time.monotonic() - self.soak.frozen_at)
            raise


async def chaos(args: argparse.Namespace, coord: fleet.CoordinatorProc, soak: Soak,
                rng: Any, started: float) -> dict[str, Any]:
    """Random disconnects all along; kill -9 at 1/3, SIGSTOP at 2/3 of the run."""
    events_log: dict[str, Any] = {}
    duration = args.duration
    gap = duration / max(1, args.disconnects)
    kill_at, freeze_at = started + duration / 3, started + 2 * duration / 3
    killed = frozen = False
    while time.monotonic() - started < duration:
        await asyncio.sleep(rng.expovariate(1 / gap))
        now = time.monotonic()
        if not killed and now >= kill_at:
            killed = True
            log("kill -9 the coordinator, restart it")
            coord.kill9()
            await coord.start()
            events_log["kill9_at_s"] = round(now - started, 1)
            continue
        if not frozen and now >= freeze_at:
            frozen = True
            log(f"SIGSTOP the coordinator for {args.freeze:g} s")
            assert coord.proc is not None
            soak.frozen_at = time.monotonic()
            coord.proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(args.freeze)
            coord.proc.send_signal(signal.SIGCONT)
            events_log["sigstop_at_s"] = round(soak.frozen_at - started, 1)
            soak.frozen_at = None
            continue
        if soak.links:
            agent_id = rng.choice(list(soak.links))
            ws = soak.links.pop(agent_id)
            if ws.transport is not None and not ws.transport.is_closing():
                ws.transport.abort()  # a cheap router dropping the line
                soak.dropped += 1
    return events_log


async def stored_events(database_url: str) -> dict[str, list[int]]:
    db = Database(database_url)
    try:
        async with db.connect() as conn:
            rows = (await conn.execute(sa.select(events.c.agent_id, events.c.seq))).all()
    finally:
        await db.close()
    found: dict[str, list[int]] = collections.defaultdict(list)
    for agent_id, seq in rows:
        found[agent_id].append(int(seq))
    return found


async def run(args: argparse.Namespace, root: Path, children: fleet.Children) -> dict[str, Any]:
    loop, main_task = asyncio.get_running_loop(), asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    n = args.agents
    results: dict[str, Any] = {
        "agents": n, "duration_s": args.duration, "disconnects_planned": args.disconnects,
        "freeze_s": args.freeze, "heartbeat_interval_s": args.heartbeat_interval,
        "event_every_s": args.event_every, "machine": fleet.machine_info(),
        "source": fleet.source_info(),
    }
    coord = await asyncio.to_thread(fleet.CoordinatorProc, children, root, args.database,
                                    args.heartbeat_interval)
    await coord.start()
    log(f"coordinator pid {coord.pid} on {coord.url}")

    identities = [fleet.Identity(fleet.generate_key()) for _ in range(n)]
    join = await asyncio.to_thread(coord.customer_join, "Soak Co", n)
    await fleet.enroll_all(fleet.JoinString.parse(join), identities,
                           6, timeout=max(120, n * 0.5))  # quotas: 8 enrollments per address
    soak = Soak()
    SoakAgent.soak = soak
    SoakAgent.soak_every = args.event_every
    sim_fleet = fleet.Fleet(coord.url, coord.ca_pem, identities, bare=False, concurrency=200,
                            seed=args.seed, agent_class=SoakAgent)
    try:
        connected = await sim_fleet.connect_all(timeout=300)
        log(f"{connected['connected']}/{n} online; soaking for {args.duration:g} s")
        started = time.monotonic()
        results["chaos"] = await chaos(args, coord, soak, sim_fleet.sim.rng, started)
        results["connections_dropped"] = soak.dropped
        soak.emitting = False
        log("chaos over; waiting for every outbox to drain and every agent to be online")
        agents: list[SoakAgent] = sim_fleet.agents  # type: ignore[assignment]
        settle_started = time.monotonic()
        deadline = settle_started + args.settle_timeout
        while time.monotonic() < deadline:
            undelivered = sum(len(a.outbox) for a in agents)
            if undelivered == 0 and sim_fleet.sim.online == n:
                break
            await asyncio.sleep(1)

        def statuses() -> collections.Counter[str]:
            with coord.admin() as client:
                return collections.Counter(a["status"] for a in client.call("agents.list"))

        status = await asyncio.to_thread(statuses)
        while status.get("online", 0) < n and time.monotonic() < deadline:
            await asyncio.sleep(1)
            status = await asyncio.to_thread(statuses)
        results["settle_s"] = round(time.monotonic() - settle_started, 1)
        stored = await stored_events(coord.database_url)
        by_id = {a.identity.agent_id: a for a in agents}
        missing = sum(len(set(a.emitted) - set(stored.get(i, []))) for i, a in by_id.items())
        duplicates = sum(len(seqs) - len(set(seqs)) for seqs in stored.values())
        unexpected = sum(len(set(stored.get(i, [])) - set(a.emitted)) for i, a in by_id.items())
        noticed = soak.noticed_after
        results.update({
            "events_emitted": sum(len(a.emitted) for a in agents),
            "events_stored": sum(len(v) for v in stored.values()),
            "events_missing": missing, "events_duplicated": duplicates,
            "events_unexpected": unexpected,
            "undelivered_at_end": sum(len(a.outbox) for a in agents),
            "status_at_end": dict(status),
            "agents_online_at_end": status.get("online", 0),
            "frozen_noticed_by": len(noticed),
            "frozen_noticed_p50_s": fleet._round(percentile(noticed, 50), 2),
            "frozen_noticed_max_s": fleet._round(max(noticed) if noticed else None, 2),
            "target_notice_s": 2 * args.heartbeat_interval,
            "sim_failures": dict(sim_fleet.sim.failures),
        })
        results["ok"] = (missing == 0 and duplicates == 0 and unexpected == 0
                         and status.get("online", 0) == n)
    finally:
        sim_fleet.sim.stopping = True
        with contextlib.suppress(Exception):
            await sim_fleet.close()
        coord.stop()
    return results


def table(r: dict[str, Any]) -> str:
    return "\n".join([
        f"soak: {r['agents']} agents, {r['duration_s']:g} s, heartbeat {r['heartbeat_interval_s']:g} s, "
        f"{r['connections_dropped']} connections dropped, kill -9 at {r['chaos'].get('kill9_at_s')} s, "
        f"SIGSTOP {r['freeze_s']:g} s at {r['chaos'].get('sigstop_at_s')} s",
        f"  events: {r['events_emitted']} emitted, {r['events_stored']} stored, "
        f"{r['events_missing']} missing, {r['events_duplicated']} duplicated, "
        f"{r['events_unexpected']} unexpected",
        f"  online at the end: {r['agents_online_at_end']}/{r['agents']} ({r['status_at_end']}), "
        f"settled in {r['settle_s']} s",
        f"  frozen coordinator noticed by {r['frozen_noticed_by']} agents: p50 "
        f"{r['frozen_noticed_p50_s']} s, max {r['frozen_noticed_max_s']} s "
        f"(target <= {r['target_notice_s']:g} s)",
        f"  OK: {r['ok']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of chaos")
    parser.add_argument("--disconnects", type=int, default=1000)
    parser.add_argument("--freeze", type=float, default=90.0, help="SIGSTOP seconds")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0)
    parser.add_argument("--event-every", type=float, default=10.0,
                        help="mean seconds between one agent's events")
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument("--database", default="", help="postgresql://... (default SQLite)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    soft, hard = fleet.raise_nofile()
    if soft < args.agents + 200:
        parser.error(f"RLIMIT_NOFILE is {soft} (hard {hard}); {args.agents} agents need more")
    code = fleet.run_and_report(args, "careline-soak-", run, table)
    return code


if __name__ == "__main__":
    sys.exit(main())
