"""Soak: one hostile agent beside N well-behaved ones (issue 12).

    python bench/soak_hostile.py [--agents 1000] [--duration 120] [--heartbeat-interval 5]
                                 [--database URL] [--json]

Starts a real coordinator (bench/fleet.py's CoordinatorProc) and N simulated agents
(bench/fleet.py's SimAgent: the real protocol, keys and reconnect loop). Beside them one
hostile agent, enrolled like the others, spends the whole duration attacking in turns:
heartbeats with NaN and oversized values, 200 problems, 32 distinct problems (valid, to
open incidents), events of unknown kinds, an oversized event, floods of events (it
reconnects at once after each refusal, ignoring the retry-after), and idle unauthenticated
connections it renews as the coordinator drops them.

Figures (table, or --json):
  stored    well-behaved agents whose latest heartbeat was stored by the end (all, hopefully)
  stale     samples (one per agent every 2 intervals) where an agent's stored heartbeat was
            older than interval + 3 s: heartbeats that storage lost or delayed
  offline   well-behaved agents the coordinator listed as not online, summed over samples
  reconnects of well-behaved agents (each is a lost connection)
  rss       coordinator RSS once the fleet is connected, peak in the first and second half
            of the soak: bounded means the second half's peak is not above the first's
            by more than 10 % (the hostile agent's traffic does not accumulate)
  hostile   what it sent, how the coordinator closed it (by close code), what it stored

Everything listens on 127.0.0.1; every process started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import fleet  # bench/fleet.py: the simulator and the process helpers
import msgspec
from measure import PeakRSS
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from careline.shared import protocol as p
from careline.shared.keys import JoinString, generate_key, sign_challenge
from careline.shared.tls import pinned_client_context


class Hostile:
    """A virus-infected PC: authenticates properly, then sends whatever it likes."""

    def __init__(self, url: str, ca_pem: str, identity: fleet.Identity) -> None:
        self.url = url
        self.ssl = pinned_client_context(ca_pem)
        self.identity = identity
        self.sent: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[str] = collections.Counter()
        self.idle: list[ClientConnection] = []
        self.seq = 0

    async def session(self) -> ClientConnection:
        ws = await connect(self.url + p.AGENT_PATH, ssl=self.ssl, compression=None,
                           max_size=None, open_timeout=20, close_timeout=1, ping_interval=None)
        challenge = p.decode(await ws.recv(), p.Challenge)
        agent_id = self.identity.agent_id
        await ws.send(p.encode(p.Hello(agent_id=agent_id, agent_version="evil", signature=sign_challenge(
            self.identity.key, challenge.nonce, agent_id))))
        p.decode(await ws.recv(), p.Welcome)
        return ws

    def _health(self, problems: int = 0, **bad: Any) -> dict[str, Any]:
        health = p.to_builtins(fleet.sample_health(0))
        health["problems"] = [{"kind": "product_not_running", "subject": f"Evil{i}", "detail": "x"}
                              for i in range(problems)]
        health.update(bad)
        return dict(health)

    def _event(self, kind: str, data: dict[str, Any] | None = None) -> bytes:
        self.seq += 1
        return p.encode(p.Event(seq=self.seq, kind=kind, at=time.time(), data=data or {}))

    def attacks(self) -> list[tuple[str, list[bytes]]]:
        raw = msgspec.msgpack.encode
        return [
            ("nan heartbeat", [raw({"t": "heartbeat", "health": self._health(cpu_percent=float("nan"))})]),
            ("huge strings", [raw({"t": "heartbeat", "health": self._health(os="x" * 100_000)})]),
            ("200 problems", [raw({"t": "heartbeat", "health": self._health(200)})]),
            ("32 problems", [raw({"t": "heartbeat", "health": self._health(32)})] * 3),
            ("unknown kinds", [self._event(f"payload_{i}") for i in range(50)]),
            ("oversized event", [self._event("update_step", {"blob": "x" * (200 << 10)})]),
            ("event flood", [self._event("update_step", {"n": i}) for i in range(2000)]),
        ]

    async def attack(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, frames in self.attacks():
                if stop.is_set():
                    return
                await self._renew_idle()
                try:
                    ws = await self.session()
                except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
                    self.closes[f"connect failed: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.5)
                    continue
                try:
                    for frame in frames:
                        await ws.send(frame)
                        self.sent[name] += 1
                    async with asyncio.timeout(3):  # read until the coordinator closes it
                        async for _ in ws:
                            pass
                except TimeoutError:
                    await ws.close()
                    self.closes[f"{name}: kept open"] += 1
                    continue
                except ConnectionClosed:
                    pass
                close = ws.protocol.close_rcvd
                reason = re.sub(r"\d+", "N", close.reason.split(":")[0]) if close else ""
                self.closes[f"{name}: {close.code if close else 'no close frame'} {reason}"] += 1

    async def _renew_idle(self, count: int = 30) -> None:
        """Keep `count` upgraded /agent connections that never answer the challenge."""
        self.idle = [ws for ws in self.idle if ws.state.name == "OPEN"]
        while len(self.idle) < count:
            try:
                self.idle.append(await connect(self.url + p.AGENT_PATH, ssl=self.ssl,
                                               compression=None, open_timeout=20))
            except (OSError, InvalidHandshake, TimeoutError):
                self.closes["idle refused"] += 1
                break
            self.sent["idle connections"] += 1


def hostile_storage(database_url: str, agent_id: str) -> dict[str, int]:
    if not database_url.startswith("sqlite:///"):
        return {}
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        def count(sql: str) -> int:
            return int(conn.execute(sql, (agent_id,)).fetchone()[0])
        return {
            "events": count("SELECT count(*) FROM events WHERE agent_id = ?"),
            "open_incidents": count(
                "SELECT count(*) FROM incidents WHERE agent_id = ? AND status = 'open'"),
            "visits": count("SELECT count(*) FROM visits WHERE agent_id = ?"),
        }


async def run(args: argparse.Namespace, root: Path, children: fleet.Children) -> dict[str, Any]:
    loop, main_task = asyncio.get_running_loop(), asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    n, interval = args.agents, args.heartbeat_interval
    results: dict[str, Any] = {"agents": n, "duration_s": args.duration, "heartbeat_interval": interval,
                               "database": "postgresql" if args.database else "sqlite",
                               "machine": fleet.machine_info(), "source": fleet.source_info()}
    database, pg_name = "", ""
    if args.database:
        database, pg_name = await fleet.create_pg_database(args.database)
    try:
        coord = await asyncio.to_thread(fleet.CoordinatorProc, children, root, database, interval)
        await coord.start()
        fleet.log(f"coordinator pid {coord.pid} on {coord.url}")

        join = JoinString.parse(await asyncio.to_thread(coord.customer_join, "Soak Co", n + 1))
        identities = [fleet.Identity(generate_key()) for _ in range(n + 1)]
        await fleet.enroll_all(join, identities, 32, timeout=max(120, n * 0.2))
        evil_identity, identities = identities[0], identities[1:]
        good = fleet.Fleet(coord.url, coord.ca_pem, identities, bare=False, concurrency=100,
                           seed=args.seed)
        connected = await good.connect_all(timeout=max(120, n * 0.5))
        if connected["connected"] < n:
            raise RuntimeError(f"only {connected['connected']}/{n} agents connected")
        good_ids = {i.agent_id for i in identities}
        welcomes_before = good.sim.welcomes
        await asyncio.sleep(interval + 2)  # every agent's first heartbeat stored
        fleet.log(f"{n} agents online; hostile agent {evil_identity.agent_id} starts")

        hostile = Hostile(coord.url, coord.ca_pem, evil_identity)
        stop = asyncio.Event()
        rss = PeakRSS(coord.pid, interval=0.2).begin()
        attacking = asyncio.create_task(hostile.attack(stop))
        stale = offline = samples = 0
        halves: list[int] = []
        started = time.monotonic()
        half_peak_reset = False
        try:
            while time.monotonic() - started < args.duration:
                await asyncio.sleep(2 * interval)
                if attacking.done():
                    attacking.result()
                now = time.time()
                stored = await fleet.stored_heartbeats(coord.database_url)
                stale += sum(1 for a in good_ids if stored.get(a, (0, 0))[0] < now - interval - 3)
                with coord.admin() as client:
                    listed = await asyncio.to_thread(client.call, "agents.list")
                offline += sum(1 for a in listed if a["id"] in good_ids and a["status"] != "online")
                samples += 1
                if not half_peak_reset and time.monotonic() - started >= args.duration / 2:
                    halves.append(rss.peak)
                    rss.peak = rss.proc.memory_info().rss
                    half_peak_reset = True
        finally:
            stop.set()
            await asyncio.wait([attacking], timeout=30)
            rss.stop()
        halves.append(rss.peak)
        # Every agent's latest heartbeat sent before now must be stored after a flush or two.
        sent = {agent.identity.agent_id: agent.seq for agent in good.agents}
        await asyncio.sleep(min(interval, 3) + 2)
        stored = await fleet.stored_heartbeats(coord.database_url)
        stored_all = sum(1 for a, seq in sent.items() if stored.get(a, (0, 0))[1] >= seq)
        results.update({
            "stored": {"agents": stored_all, "of": n},
            "stale_samples": {"stale": stale, "of": samples * n},
            "offline_samples": {"offline": offline, "of": samples * n},
            "reconnects": good.sim.welcomes - welcomes_before,
            "good_failures": dict(good.sim.failures),
            "rss_mb": {"start": round(rss.start / 2**20, 1),
                       "first_half_peak": round(halves[0] / 2**20, 1) if len(halves) > 1 else None,
                       "second_half_peak": round(halves[-1] / 2**20, 1)},
            "hostile": {"sent": dict(hostile.sent), "closes": dict(hostile.closes),
                        "stored": hostile_storage(coord.database_url, evil_identity.agent_id)},
        })
        await good.close()
        for ws in hostile.idle:
            await ws.close()
        coord.stop()
        return results
    finally:
        if pg_name:
            await fleet.drop_pg_database(args.database, pg_name)


def table(r: dict[str, Any]) -> str:
    rss = r["rss_mb"]
    bounded = (rss["first_half_peak"] is None
               or rss["second_half_peak"] <= rss["first_half_peak"] * 1.10)
    rows = [
        ("stored", f"{r['stored']['agents']}/{r['stored']['of']} agents' latest heartbeat",
         r["stored"]["agents"] == r["stored"]["of"]),
        ("stale", f"{r['stale_samples']['stale']} of {r['stale_samples']['of']} samples",
         r["stale_samples"]["stale"] == 0),
        ("offline", f"{r['offline_samples']['offline']} of {r['offline_samples']['of']} samples",
         r["offline_samples"]["offline"] == 0),
        ("reconnects", f"{r['reconnects']} {r['good_failures'] or ''}", r["reconnects"] == 0),
        ("rss", f"{rss['start']} MB start, peaks {rss['first_half_peak']} then "
                f"{rss['second_half_peak']} MB", bounded),
    ]
    head = (f"soak: {r['agents']} agents + 1 hostile, {r['duration_s']} s, heartbeat every "
            f"{r['heartbeat_interval']} s, {r['database']}")
    lines = [head, "-" * len(head)]
    lines += [f"{a:<11} {b}  [{'ok' if ok else 'FAIL'}]" for a, b, ok in rows]
    lines.append(f"hostile     sent {r['hostile']['sent']}")
    lines.append(f"            closes {r['hostile']['closes']}")
    lines.append(f"            stored {r['hostile']['stored']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--heartbeat-interval", type=float, default=5.0)
    parser.add_argument("--database", default="", help="postgresql://HOST/DB (a fresh database "
                        "is created next to it and dropped); default SQLite")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args(argv)
    soft, hard = fleet.raise_nofile()
    if soft < args.agents + 300:
        parser.error(f"RLIMIT_NOFILE is {soft} (hard {hard}); {args.agents} agents need more")
    return fleet.run_and_report(args, "careline-soak-", run, table)


if __name__ == "__main__":
    raise SystemExit(main())
