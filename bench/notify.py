"""Notification throughput against a real `careline serve`: N notifications queued, delivered
through one SMTP server and one webhook receiver on loopback; sent per second, p50/p99 event
-> delivery, coordinator RSS, and heartbeat throughput with and without the sending.

    python bench/notify.py [--notifications 2000] [--agents 200] [--duration 10]
                           [--max-per-second 50] [--database postgresql://...] [--json]

The coordinator is `careline serve` on SQLite (or, with --database, a fresh PostgreSQL
database) in a temporary data dir. Channels, recipients and
routes are made through its admin API; the receivers (aiosmtpd, and an HTTP server verifying
every HMAC) run in this process. Half the notifications go by e-mail, half by webhook. They
are queued into the coordinator's database through the storage layer exactly as the
coordinator queues them (coordinator.notify.events.notify, one transaction per 100 events, as
a storm of incidents would), and the coordinator's own sender delivers them. "event ->
delivery" runs from each event's commit to its arrival at the receiver.

With --agents N (0 to skip), N simulated agents (bench/fleet.py) blast heartbeats for
--duration seconds twice: once idle, once right after the notifications are queued, while
the coordinator sends them; the ratio is the heartbeat rate while sending over the idle one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import secrets
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fleet  # noqa: E402
from measure import PeakRSS, percentile  # noqa: E402

from careline.coordinator.notify import policy  # noqa: E402
from careline.coordinator.notify.events import notify  # noqa: E402
from careline.coordinator.storage import fleet as fstore  # noqa: E402
from careline.coordinator.storage.db import Database  # noqa: E402
from careline.shared.keys import JoinString, generate_key  # noqa: E402
from tests.notify.receivers import Mailbox, WebhookReceiver  # noqa: E402

ALL_DAY = {"workdays": "mon,tue,wed,thu,fri,sat,sun", "opens": "00:00", "closes": "23:59"}
CUSTOMERS = ("Minh Anh", "Hoa Binh")  # even events -> webhook, odd ones -> e-mail


def configure(coord: fleet.CoordinatorProc, mailbox: Mailbox, hook: WebhookReceiver,
              secret: str, agents: int) -> str:
    """Channels, recipients and routes through the admin API; returns a join string."""
    with coord.admin() as client:
        for name in CUSTOMERS:
            client.call("customers.add", name=name)
        client.call("notify.channels.add", name="mail", kind="email", host="127.0.0.1",
                    port=mailbox.port, security="none", from_addr="careline@vendor.vn",
                    rate_per_minute=0)
        client.call("notify.channels.add", name="hook", kind="webhook", url=hook.url,
                    secret=secret, rate_per_minute=0)
        for recipient, channel, address, lang, customer in (
                ("ops", "hook", "", "en", CUSTOMERS[0]),
                ("lan", "mail", "lan@vendor.vn", "vi", CUSTOMERS[1])):
            client.call("notify.recipients.add", name=recipient, channel=channel,
                        address=address, language=lang, timezone="UTC", **ALL_DAY)
            client.call("notify.routes.add", recipient=recipient, events="incident.opened",
                        customer=customer)
        return str(client.call("tokens.create", customer=CUSTOMERS[0], uses=max(agents, 1),
                               expires_seconds=6 * 3600)["join"])


async def queue(database_url: str, n: int) -> dict[int, float]:
    """N incident.opened events into the outbox; returns event number -> commit time."""
    db = Database(database_url)
    committed: dict[int, float] = {}
    try:
        async with db.connect() as conn:
            ids = [(await fstore.get_customer(conn, name)).id for name in CUSTOMERS]
        facts = {"kind": "disk_failing", "severity": "high", "detail": "SMART failed",
                 "machine": "ab" * 20, "action": "onsite_reinstall", "covered": True,
                 "fee_vnd": 500_000, "due_at": dt.datetime.now(dt.UTC).isoformat()}
        for start in range(0, n, 100):
            batch = range(start, min(n, start + 100))
            async with db.transaction() as conn:
                for i in batch:
                    await notify(conn, policy.Event(
                        "incident.opened", f"incident:{i}:opened", "high",
                        {**facts, "incident": i, "hostname": f"pc{i:05d}",
                         "customer": CUSTOMERS[i % 2]},
                        customer_id=ids[i % 2], thread=f"incident:{i}"), dt.datetime.now(dt.UTC))
            committed.update((i, time.time()) for i in batch)
    finally:
        await db.close()
    return committed


class Arrivals:
    """When each event's message reached its receiver (polled from the receivers' lists)."""

    def __init__(self, mailbox: Mailbox, hook: WebhookReceiver) -> None:
        self.mailbox, self.hook = mailbox, hook
        self.at: dict[int, float] = {}
        self._mails = self._hooks = 0

    def poll(self) -> int:
        now = time.time()
        mails = self.mailbox.messages[self._mails:]  # the receivers' threads keep appending
        hooks = self.hook.received[self._hooks:]
        self._mails += len(mails)
        self._hooks += len(hooks)
        for mail in mails:
            self.at[int(mail["Subject"].split("#")[1].split(":")[0])] = now
        for payload in hooks:
            self.at[int(payload["items"][0]["incident"])] = now
        return len(self.at)

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.poll()
            await asyncio.sleep(0.02)


async def run(args: argparse.Namespace, root: Path, children: fleet.Children) -> dict[str, Any]:
    database, pg_name = "", ""
    if args.database:
        database, pg_name = await fleet.create_pg_database(args.database)
    try:
        return await _run(args, root, children, database)
    finally:
        if pg_name:
            await fleet.drop_pg_database(args.database, pg_name)


async def _run(args: argparse.Namespace, root: Path, children: fleet.Children,
               database: str) -> dict[str, Any]:
    n, secret = args.notifications, secrets.token_urlsafe(24)
    results: dict[str, Any] = {"notifications": n, "agents": args.agents,
                               "database": "postgresql" if database else "sqlite",
                               "machine": fleet.machine_info(), "source": fleet.source_info()}
    coord = await asyncio.to_thread(fleet.CoordinatorProc, children, root, database, 30.0)
    (coord.data / "notify.toml").write_text(
        f"poll_seconds = 0.2\nfold_window_seconds = 0\nmax_per_second = {args.max_per_second}\n")
    results["max_per_second"] = args.max_per_second
    await coord.start()
    with Mailbox() as mailbox, WebhookReceiver(secret) as hook:
        join = await asyncio.to_thread(configure, coord, mailbox, hook, secret, args.agents)
        sim = None
        if args.agents:
            identities = [fleet.Identity(generate_key()) for _ in range(args.agents)]
            # At most 8 enrollments and 64 handshakes at a time per address (coordinator.quotas).
            await fleet.enroll_all(JoinString.parse(join), identities, 6, timeout=600)
            sim = fleet.Fleet(coord.url, coord.ca_pem, identities, bare=False, concurrency=48,
                              seed=1)
            await sim.connect_all(timeout=600)
            fleet.log(f"{args.agents} agents online; idle heartbeat blast {args.duration}s")
            results["heartbeat_idle"] = await fleet.blast_coordinator(
                sim, coord, args.duration, args.in_flight)
        arrivals = Arrivals(mailbox, hook)
        stop = asyncio.Event()
        watcher = asyncio.create_task(arrivals.watch(stop))
        rss = PeakRSS(coord.pid).begin()
        fleet.log(f"queueing {n} notifications")
        t0 = time.time()
        committed = await queue(coord.database_url, n)
        results["queue_per_s"] = round(n / (time.time() - t0))
        if sim is not None:
            fleet.log(f"heartbeat blast {args.duration}s while the coordinator sends")
            results["heartbeat_sending"] = await fleet.blast_coordinator(
                sim, coord, args.duration, args.in_flight)
            results["heartbeat_sending"]["delivered_when_blast_ended"] = arrivals.poll()
        deadline = time.monotonic() + args.timeout
        while arrivals.poll() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await watcher
        rss.stop()
        if sim is not None:
            await sim.close()
    coord.stop()
    latencies = [arrivals.at[i] - committed[i] for i in arrivals.at]
    delivered = len(arrivals.at)
    results.update({
        "delivered": delivered, "mails": len(mailbox.messages), "webhooks": len(hook.received),
        "duplicates": len(mailbox.messages) + len(hook.received) - delivered,
        "rejected_signatures": hook.rejected,
        "sent_per_s": round(delivered / (max(arrivals.at.values()) - t0)) if delivered else 0,
        "p50_event_to_delivery_s": round(percentile(latencies, 50) or 0, 2),
        "p99_event_to_delivery_s": round(percentile(latencies, 99) or 0, 2),
        "coordinator_rss_start_mb": round(rss.start / 2**20, 1),
        "coordinator_rss_peak_mb": round(rss.peak / 2**20, 1),
    })
    if sim is not None:
        idle, busy = results["heartbeat_idle"]["rate_per_s"], results["heartbeat_sending"]["rate_per_s"]
        results["heartbeat_ratio"] = round(busy / idle, 3) if idle else None
    if delivered < n:
        raise RuntimeError(f"only {delivered}/{n} notifications arrived within {args.timeout}s")
    return results


def table(r: dict[str, Any]) -> str:
    lines = [f"{key:28} {value}" for key, value in r.items()
             if key not in ("machine", "source", "heartbeat_idle", "heartbeat_sending")]
    for key in ("heartbeat_idle", "heartbeat_sending"):
        if key in r:
            lines.append(f"{key:28} {r[key]['rate_per_s']}/s (cpu {r[key]['cpu']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notifications", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=200, help="heartbeat blasters; 0: none")
    parser.add_argument("--duration", type=float, default=10.0, help="each heartbeat blast, s")
    parser.add_argument("--in-flight", type=int, default=40000)
    parser.add_argument("--timeout", type=float, default=900.0, help="wait for deliveries, s")
    parser.add_argument("--max-per-second", type=float, default=50.0,
                        help="the coordinator's sending pace (notify.toml; 0: none)")
    parser.add_argument("--database", default="",
                        help="postgresql://... (a fresh database is made beside it; default SQLite)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    return fleet.run_and_report(args, "careline-notify-bench-", run, table)


if __name__ == "__main__":
    sys.exit(main())
