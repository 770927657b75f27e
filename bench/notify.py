"""Notification throughput: N notifications queued, delivered through one SMTP server and
one webhook receiver on loopback; sent per second, p99 event -> delivery, RSS.

    python bench/notify.py --notifications 2000 [--database postgresql://...] [--json]

The sender (coordinator.notify.sender.Notifier) runs in this process on a fresh SQLite (or
the given PostgreSQL) database, exactly as in `careline serve`, without the websocket side;
the receivers (aiosmtpd, and an HTTP server verifying every HMAC) run in threads of this
process too, so RSS and CPU include them. Half the notifications go by e-mail, half by
webhook; all are queued first (one transaction per 100 events, as a storm would), then
drained. "event -> delivery" is from each event's commit to its arrival at the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import PeakRSS, percentile  # noqa: E402

from careline.coordinator.incidents import IncidentDesk  # noqa: E402
from careline.coordinator.notify import policy  # noqa: E402
from careline.coordinator.notify.events import notify  # noqa: E402
from careline.coordinator.notify.sender import Notifier  # noqa: E402
from careline.coordinator.policy.config import load_policy  # noqa: E402
from careline.coordinator.storage import fleet  # noqa: E402
from careline.coordinator.storage import notify as store  # noqa: E402
from careline.coordinator.storage.db import Database  # noqa: E402
from tests.notify.receivers import Mailbox, WebhookReceiver  # noqa: E402

ALL_DAY = {"workdays": "mon,tue,wed,thu,fri,sat,sun", "opens": "00:00", "closes": "23:59",
           "timezone": "UTC"}


async def run(n: int, database: str, root: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(24)
    db = Database(database)
    await db.migrate()
    coordinator = types.SimpleNamespace(db=db, datadir=types.SimpleNamespace(path=root),
                                        desk=IncidentDesk(db, load_policy(None), dt.timedelta(90)))
    notifier = Notifier(coordinator)  # type: ignore[arg-type]
    arrived: dict[str, float] = {}
    with Mailbox() as mailbox, WebhookReceiver(secret) as hook:
        now = dt.datetime.now(dt.UTC)
        async with db.transaction() as conn:
            # Odd events belong to one customer, routed to the mailbox; even ones to another,
            # routed to the webhook.
            customers = [(await fleet.add_customer(conn, name, "Asia/Ho_Chi_Minh", now))["id"]
                         for name in ("Minh Anh", "Hoa Binh")]
            mail = await store.add_channel(conn, {
                "name": "mail", "kind": "email", "rate_per_minute": 0, "created_by": "bench",
                "config": {"host": "127.0.0.1", "port": mailbox.port, "security": "none",
                           "username": "", "from_addr": "careline@vendor.vn", "timeout": 20.0},
                "secret": "", "created_at": now})
            webhook = await store.add_channel(conn, {
                "name": "hook", "kind": "webhook", "rate_per_minute": 0, "created_by": "bench",
                "config": {"url": hook.url, "timeout": 20.0},
                "secret": notifier.secrets.encrypt(secret), "created_at": now})
            for name, channel, address, lang, customer in (
                    ("lan", mail, "lan@vendor.vn", "vi", customers[1]),
                    ("ops", webhook, "", "en", customers[0])):
                rid = await store.add_recipient(conn, {
                    "name": name, "channel_id": channel, "address": address, "language": lang,
                    "created_at": now, **ALL_DAY})
                await store.add_route(conn, {"recipient_id": rid, "events": "incident.opened",
                                             "customer_id": customer, "kinds": "",
                                             "min_severity": "low", "created_at": now})
        facts = {"kind": "disk_failing", "severity": "high", "detail": "SMART failed",
                 "machine": "ab" * 20, "customer": "Minh Anh", "action": "onsite_reinstall",
                 "covered": True, "fee_vnd": 500_000, "due_at": now.isoformat()}
        committed: dict[int, float] = {}
        queue_start = time.perf_counter()
        for start in range(0, n, 100):
            async with db.transaction() as conn:
                for i in range(start, min(n, start + 100)):
                    await notify(conn, policy.Event(
                        "incident.opened", f"incident:{i}:opened", "high",
                        {**facts, "incident": i, "hostname": f"pc{i:05d}"},
                        customer_id=customers[i % 2],
                        thread=f"incident:{i}"), dt.datetime.now(dt.UTC))
            for i in range(start, min(n, start + 100)):
                committed[i] = time.time()
        queue_seconds = time.perf_counter() - queue_start

        def collect() -> int:
            for message in mailbox.messages[len([k for k in arrived if k.startswith("m")]):]:
                arrived[f"m{message['Subject'].split('#')[1].split(':')[0]}"] = time.time()
            for payload in hook.received[len([k for k in arrived if k.startswith("w")]):]:
                arrived[f"w{payload['items'][0]['incident']}"] = time.time()
            return len(arrived)

        with PeakRSS(os.getpid()) as rss:
            send_start = time.perf_counter()
            while True:
                claimed = await notifier.deliver_due(dt.datetime.now(dt.UTC))
                collect()
                if not claimed:
                    break
            send_seconds = time.perf_counter() - send_start
        collect()
    await db.close()
    latencies = [arrived[k] - committed[int(k[1:])] for k in arrived]
    return {
        "notifications": n, "database": "postgresql" if "postgres" in database else "sqlite",
        "delivered": len(arrived), "mails": len(mailbox.messages), "webhooks": len(hook.received),
        "rejected_signatures": hook.rejected,
        "queue_per_s": round(n / queue_seconds), "sent_per_s": round(len(arrived) / send_seconds),
        "p50_event_to_delivery_s": round(percentile(latencies, 50) or 0, 2),
        "p99_event_to_delivery_s": round(percentile(latencies, 99) or 0, 2),
        "rss_start_mb": round(rss.start / 2**20, 1), "rss_peak_mb": round(rss.peak / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notifications", type=int, default=2000)
    parser.add_argument("--database", default="", help="postgresql://... (default: SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="careline-notify-bench-") as tmp:
        database = args.database or f"sqlite:///{Path(tmp) / 'careline.db'}"
        figures = asyncio.run(run(args.notifications, database, Path(tmp)))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:28} {value}")
    return 0 if figures["delivered"] == figures["notifications"] else 1


if __name__ == "__main__":
    sys.exit(main())
