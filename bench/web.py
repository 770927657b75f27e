"""Web console and REST API response times at fleet scale (issue 15).

Fills a fresh coordinator database with N machines (direct inserts: customers, each with a
contract and most with a maintenance package, ends spread so some expire soon; agents with a
health report; open and resolved incidents each with a decision), starts `careline serve --web`
and times, one request after another over HTTPS:

    GET  /fleet                      the fleet overview page (rendered HTML)
    GET  /incidents                  the first page of open incidents (rendered HTML)
    GET  /customers/1                the customer holding --big-customer of the machines
    GET  /contracts/expiring         machines whose coverage ends within 60 days, fleet-wide
    POST /api/v1/fleet/overview      the same data as JSON (bearer token)
    POST /api/v1/incidents/page      50 incidents, open first, as JSON

    python bench/web.py [--machines 10000] [--big-customer 0.2] [--requests 200]
                        [--database postgresql://...] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import free_port
from measure import percentile

PAGES = ("fleet_page", "incidents_page", "customer_page", "expiring_page", "api_fleet_overview",
         "api_incidents_page")
PYTHON = sys.executable
CLI = [PYTHON, "-m", "careline.coordinator.cli"]


def customer_of(i: int, machines: int, customers: int, big_share: float) -> int:
    """Customer 1 holds the first `big_share` of the machines; the rest go round the others."""
    big = int(machines * big_share)
    return 1 if i < big or customers == 1 else (i - big) % (customers - 1) + 2


async def fill(url: str, machines: int, customers: int, open_share: float,
               big_share: float) -> dict[str, int]:
    """Direct inserts, in batches: what months of a real fleet leave in the tables."""
    from careline.coordinator.storage import schema as t
    from careline.coordinator.storage.db import Database

    now = dt.datetime.now(dt.UTC)
    db = Database(url)
    counts = {"customers": customers, "machines": machines, "incidents": 0, "open_incidents": 0}
    try:
        async with db.transaction() as conn:
            await conn.execute(t.customers.insert(), [
                {"id": c + 1, "name": f"Công ty số {c + 1}", "timezone": "Asia/Ho_Chi_Minh",
                 "created_at": now} for c in range(customers)])
            # One contract each, 12 months of warranty signed 10-14 months ago (some still in
            # warranty, some ending within weeks); two customers in three bought maintenance,
            # ending on a day spread over the next 120 days.
            today = now.date()
            await conn.execute(t.contracts.insert(), [
                {"id": c + 1, "customer_id": c + 1, "signed_on": today - dt.timedelta(days=300 + c % 120),
                 "warranty_months": 12, "machines": None, "created_at": now} for c in range(customers)])
            await conn.execute(t.maintenance_packages.insert(), [
                {"contract_id": c + 1, "start": today - dt.timedelta(days=60),
                 "end": today + dt.timedelta(days=c % 120), "tier": ("basic", "standard", "premium")[c % 3],
                 "created_at": now} for c in range(customers) if c % 3])
            health = {"disk_free_percent": 41.5, "cpu_percent": 3.0, "memory_percent": 52.0,
                      "products": [{"name": "KeToan", "version": "2026.1", "running": True}]}
            rows = []
            for i in range(machines):
                online = i % 10 != 0
                rows.append({
                    "id": f"ag-{i:08d}{secrets.token_hex(4)}",
                    "customer_id": customer_of(i, machines, customers, big_share),
                    "public_key": secrets.token_bytes(32), "hostname": f"KETOAN-{i:05d}",
                    "os": "Windows 10", "agent_version": "0.1.0", "enrolled_at": now,
                    "connected": online, "last_seen": now if online else now - dt.timedelta(days=2),
                    "health": health})
            counts["big_customer_machines"] = sum(r["customer_id"] == 1 for r in rows)
            for start in range(0, machines, 1000):
                await conn.execute(t.agents.insert(), rows[start:start + 1000])
            incidents, decisions = [], []
            incident_id = 0
            for i, agent in enumerate(rows):
                for n in range(2):  # two incidents each: one resolved, some still open
                    incident_id += 1
                    is_open = n == 1 and (i % int(1 / open_share) == 0)
                    opened = now - dt.timedelta(days=30 - n * 10, minutes=i % 600)
                    incidents.append({
                        "id": incident_id, "agent_id": agent["id"], "customer_id": agent["customer_id"],
                        "kind": "disk_full", "subject": "C:", "category": "disk", "severity": "high",
                        "status": "open" if is_open else "resolved", "opened_by": "agent",
                        "opened_at": opened, "updated_at": opened,
                        "resolved_at": None if is_open else opened + dt.timedelta(hours=3),
                        "signals": 1, "touched": False, "detail": "", "resolution": None})
                    decisions.append({
                        "incident_id": incident_id, "decided_at": opened, "action": "onsite_reinstall",
                        "covered": True, "billable": True, "fee_vnd": 500_000, "quote_vnd": 500_000,
                        "due_at": opened + dt.timedelta(hours=8), "rule": 5, "reasons": ["bench"],
                        "facts": {}})
                    counts["open_incidents"] += is_open
            counts["incidents"] = incident_id
            for start in range(0, len(incidents), 2000):
                await conn.execute(t.incidents.insert(), incidents[start:start + 2000])
                await conn.execute(t.decisions.insert(), decisions[start:start + 2000])
    finally:
        await db.close()
    return counts


class Client:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), urllib.request.HTTPCookieProcessor(self.jar))

    def sign_in(self) -> None:
        page = self.opener.open(self.base + "/signin").read().decode()
        pre = re.search(r'name="pre" value="([^"]+)"', page)
        assert pre is not None
        body = f"pre={pre.group(1)}&token={self.token}&timezone=Asia/Ho_Chi_Minh".encode()
        fleet = self.opener.open(self.base + "/signin", data=body).read().decode()
        assert 'data-live-url' in fleet, "sign-in failed"

    def get(self, path: str) -> bytes:
        return bytes(self.opener.open(self.base + path).read())

    def post_json(self, path: str, params: dict[str, Any]) -> bytes:
        request = urllib.request.Request(self.base + path, data=json.dumps(params).encode(), headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        return bytes(self.opener.open(request).read())


def timed(requests: int, call: Any) -> dict[str, Any]:
    call()  # warm: templates compiled, connections pooled
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(times, 50) or 0, 1), "p95_ms": round(percentile(times, 95) or 0, 1),
            "max_ms": round(max(times), 1), "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--open-share", type=float, default=0.2, help="machines with an open incident")
    parser.add_argument("--big-customer", type=float, default=0.2,
                        help="share of the machines customer 1 holds (its page is timed)")
    parser.add_argument("--database", default="", help="postgresql://... (default SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="careline-web-bench-"))
    data, port, web = tmp / "data", free_port(), free_port()
    init = [*CLI, "init", "--data", str(data), "--listen", f"127.0.0.1:{port}", "--json"]
    if args.database:
        init += ["--database", args.database]
    token = json.loads(subprocess.run(init, check=True, capture_output=True, text=True).stdout)["admin_token"]
    db_url = args.database or f"sqlite:///{data / 'careline.db'}"
    started = time.perf_counter()
    counts = asyncio.run(fill(db_url, args.machines, args.customers, args.open_share,
                                args.big_customer))
    fill_s = time.perf_counter() - started
    server = subprocess.Popen([*CLI, "serve", "--data", str(data), "--web", f"127.0.0.1:{web}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        client = Client(f"https://127.0.0.1:{web}", token)
        while True:
            try:
                client.sign_in()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        figures: dict[str, Any] = {
            "database": "postgresql" if args.database else "sqlite", **counts, "fill_s": round(fill_s, 1),
            "fleet_page": timed(args.requests, lambda: client.get("/fleet")),
            "incidents_page": timed(args.requests, lambda: client.get("/incidents")),
            "customer_page": timed(args.requests, lambda: client.get("/customers/1")),
            "expiring_page": timed(args.requests, lambda: client.get("/contracts/expiring?within=60")),
            "api_fleet_overview": timed(args.requests,
                                        lambda: client.post_json("/api/v1/fleet/overview", {})),
            "api_incidents_page": timed(args.requests, lambda: client.post_json(
                "/api/v1/incidents/page", {"open": True, "limit": 50})),
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{figures['machines']} machines, {figures['customers']} customers, "
          f"{figures['incidents']} incidents ({figures['open_incidents']} open) on "
          f"{figures['database']}; customer 1 holds {figures['big_customer_machines']};"
          f" filled in {figures['fill_s']} s")
    for key in PAGES:
        f = figures[key]
        print(f"  {key:20} p50 {f['p50_ms']:7.1f} ms   p95 {f['p95_ms']:7.1f} ms   max {f['max_ms']:7.1f} ms")


if __name__ == "__main__":
    main()
