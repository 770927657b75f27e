"""Issue 14 end to end: a real agent's failing disk reaches a technician's mailbox (in
Vietnamese, with the fee and due time) and a signed webhook exactly once, even when the
coordinator is killed -9 between committing and sending; and 200 machines going offline at
once make one message naming 200."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, CoordinatorProcess, run, wait_until
from tests.notify.receivers import Mailbox, WebhookReceiver


def fake_smartctl(root: Path) -> Path:
    """A smartctl that reports one disk whose SMART health check fails (exit bit 3)."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    script = bin_dir / "smartctl"
    script.write_text('#!/bin/sh\nif [ "$1" = "--scan" ]; then echo "/dev/sda -d sat"; exit 0; fi\n'
                      "echo 'SMART overall-health self-assessment test result: FAILED!'\nexit 8\n")
    script.chmod(0o755)
    return bin_dir


def setup_channels(coord: CoordinatorProcess, mailbox: Mailbox, hook: WebhookReceiver,
                   secret_env: str, events: str) -> None:
    """The customer (open all day), an e-mail and a webhook channel, a Vietnamese and an
    English recipient. The webhook goes through the CLI (secret from the environment); the
    rest through the same admin API in this process, to keep the test quick."""
    coord.cli("notify", "channels", "add", "ops-hook", "--kind", "webhook", "--url", hook.url,
              "--secret-env", secret_env, "--rate", "0")
    all_day = {"workdays": "mon,tue,wed,thu,fri,sat,sun", "opens": "00:00", "closes": "23:59"}
    with coord.client() as client:
        client.call("customers.add", name="Minh Anh")
        client.call("customers.hours", customer="Minh Anh", **all_day)
        client.call("notify.channels.add", name="mail", kind="email", host="127.0.0.1",
                    port=mailbox.port, security="none", from_addr="careline@vendor.vn",
                    rate_per_minute=0)
        client.call("notify.recipients.add", name="lan", channel="mail", address="lan@vendor.vn",
                    language="vi", **all_day)
        client.call("notify.recipients.add", name="ops", channel="ops-hook", language="en", **all_day)
        for recipient in ("lan", "ops"):
            client.call("notify.routes.add", recipient=recipient, events=events)


def test_failing_disk_notifies_once_across_kill9(tmp_path, spawn_agent, monkeypatch):
    secret = secrets.token_urlsafe(24)
    monkeypatch.setenv("HOOK_SECRET", secret)
    coord = CoordinatorProcess(tmp_path)
    (coord.data / "notify.toml").write_text("poll_seconds = 0.2\nlease_seconds = 2.0\n")
    monkeypatch.setenv("CARELINE_NOTIFY_TEST_PAUSE_AFTER_CLAIM", "1")
    coord.start()
    monkeypatch.delenv("CARELINE_NOTIFY_TEST_PAUSE_AFTER_CLAIM")
    try:
        with Mailbox() as mailbox, WebhookReceiver(secret) as hook:
            today = dt.datetime.now(dt.UTC).date()
            setup_channels(coord, mailbox, hook, "HOOK_SECRET", "incident.opened,visit.created")
            with coord.client() as client:
                contract = client.call("contracts.add", customer="Minh Anh",
                                       signed=today.isoformat(), warranty_months=12)
            listed = coord.cli("notify", "channels", "list")
            assert secret not in str(listed)
            assert {c["secret"] for c in listed} == {"set", "none"}

            monkeypatch.setenv("PATH", f"{fake_smartctl(tmp_path)}{os.pathsep}{os.environ['PATH']}")
            with coord.client() as client:
                join = client.call("tokens.create", customer="Minh Anh", uses=1,
                                   expires_seconds=600, contract=contract["id"])["join"]
            agent = spawn_agent("pc-ketoan", join)
            incident = wait_until(lambda: coord.cli("incidents", "list", "--open", "--machine",
                                                    agent.agent_id), timeout=30)[0]
            assert incident["kind"] == "disk_failing"
            assert incident["action"] == "onsite_reinstall"
            assert incident["fee_vnd"] == 500_000

            # The sender claimed both notifications and stopped before sending: kill -9 now.
            wait_until(lambda: "pausing before sending" in coord.log.read_text(), timeout=20)
            coord.kill()
            assert mailbox.messages == []
            assert hook.received == []
            coord.start()
            wait_until(lambda: len(mailbox.messages) >= 1 and len(hook.received) >= 1, timeout=20)
            time.sleep(2.0)  # nothing more arrives: no copy, no separate visit message
            assert len(mailbox.messages) == 1
            assert len(hook.received) == 1
            assert hook.rejected == 0

            mail = mailbox.messages[0]
            assert mail["To"] == "lan@vendor.vn"
            assert mail["Subject"].startswith(f"Sự cố #{incident['id']}: ổ cứng hỏng")
            body = mail.get_content()
            assert "500.000\xa0₫" in body
            assert "cài đặt lại tại chỗ" in body
            assert "Hạn xử lý" in body
            assert mail["Message-ID"].startswith("<careline-n")

            payload = hook.received[0]
            assert payload["event"] == "incident.opened"
            assert payload["count"] == 1
            assert payload["items"][0]["fee_vnd"] == 500_000
            assert payload["items"][0]["action"] == "onsite_reinstall"
            assert "Fee: 500.000" in payload["text"]
            assert "Due:" in payload["text"]
            assert hook.headers[0]["X-Careline-Delivery"] == payload["delivery"]

            status = coord.cli("notify", "status")
            assert status["unhealthy"] == []
            assert {c["channel"]: c["sent"] for c in status["channels"]} == {"mail": 1, "ops-hook": 1}
    finally:
        coord.stop()


async def _enroll_offline(db_url: str, customer: str, count: int) -> None:
    """`count` machines of `customer` enrolled an hour ago and never heard from since."""
    from careline.coordinator.storage import fleet
    from careline.coordinator.storage.db import Database

    db = Database(db_url)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    try:
        async with db.transaction() as conn:
            customer_id = (await fleet.get_customer(conn, customer)).id
            for n in range(count):
                key = secrets.token_bytes(32)
                await fleet.add_agent(conn, agent_id=f"sim{n:04d}{key.hex()[:20]}",
                                      customer_id=customer_id, public_key=key,
                                      hostname=f"ma-pc{n:03d}", os="Windows 11",
                                      agent_version="0.1.0", now=long_ago, contract_id=None,
                                      site_id=None)
    finally:
        await db.close()


@pytest.mark.slow
def test_two_hundred_machines_offline_make_one_message(tmp_path, monkeypatch):
    secret = secrets.token_urlsafe(24)
    monkeypatch.setenv("HOOK_SECRET", secret)
    policy = tmp_path / "vendor-policy.toml"
    policy.write_text("[machine]\noffline_incident_after_minutes = 0.02\n")  # 1.2 seconds
    coord = CoordinatorProcess(tmp_path)
    (coord.data / "notify.toml").write_text("poll_seconds = 0.2\nfold_window_seconds = 2.0\n")
    coord.start("--policy", str(policy))
    try:
        with Mailbox() as mailbox, WebhookReceiver(secret) as hook:
            setup_channels(coord, mailbox, hook, "HOOK_SECRET", "incident.opened")
            asyncio.run(_enroll_offline(f"sqlite:///{coord.data / 'careline.db'}", "Minh Anh", 200))
            wait_until(lambda: hook.received and mailbox.messages, timeout=40)
            time.sleep(2.0)  # no second message
            assert len(hook.received) == 1
            assert len(mailbox.messages) == 1
            assert hook.received[0]["count"] == 200
            assert hook.received[0]["subject"] == "200 machines of Minh Anh offline"
            assert mailbox.messages[0]["Subject"] == "200 máy của Minh Anh mất kết nối"
            assert len(coord.cli("incidents", "list", "--open")) == 200
    finally:
        coord.stop()


async def _queue(db_url: str, customer: str, count: int) -> None:
    """`count` incident notifications queued as the coordinator queues them."""
    from careline.coordinator.notify import policy
    from careline.coordinator.notify.events import notify
    from careline.coordinator.storage import fleet
    from careline.coordinator.storage.db import Database

    db = Database(db_url)
    try:
        async with db.transaction() as conn:
            customer_id = (await fleet.get_customer(conn, customer)).id
            for n in range(count):
                await notify(conn, policy.Event(
                    "incident.opened", f"incident:{n}:opened", "high",
                    {"incident": n, "kind": "disk_failing", "severity": "high", "detail": "",
                     "machine": "ab" * 20, "hostname": f"pc{n}", "customer": customer,
                     "action": None}, customer_id=customer_id, thread=f"incident:{n}"),
                    dt.datetime.now(dt.UTC))
    finally:
        await db.close()


def test_two_coordinators_on_postgresql_send_each_notification_once(tmp_path, pg_url, monkeypatch):
    import subprocess

    from tests.conftest import free_port, wait_for_port

    secret = secrets.token_urlsafe(24)
    monkeypatch.setenv("HOOK_SECRET", secret)
    first = CoordinatorProcess(tmp_path, pg_url)
    # Small claims at a slow pace: both processes keep claiming while the other sends.
    (first.data / "notify.toml").write_text("poll_seconds = 0.1\nbatch = 5\nmax_per_second = 40\n")
    first.start()
    second_port = free_port()
    second = subprocess.Popen(
        [PYTHON, "-m", "careline.coordinator.cli", "serve", "--data", str(first.data),
         "--listen", f"127.0.0.1:{second_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(second_port, second)
        with Mailbox() as mailbox, WebhookReceiver(secret) as hook:
            setup_channels(first, mailbox, hook, "HOOK_SECRET", "incident.opened")
            asyncio.run(_queue(pg_url, "Minh Anh", 60))
            wait_until(lambda: len(hook.received) >= 60 and len(mailbox.messages) >= 60, timeout=30)
            time.sleep(1.0)
            deliveries = [m["delivery"] for m in hook.received]
            assert len(deliveries) == 60
            assert len(set(deliveries)) == 60
            assert len({m["Message-ID"] for m in mailbox.messages}) == len(mailbox.messages) == 60
    finally:
        second.terminate()
        second.wait(10)
        first.stop()


def test_admin_commands_customer_optin_and_an_unhealthy_channel(tmp_path, monkeypatch):
    """The CLI end to end: secrets only from the environment and never shown, a test
    message, customer opt-in, and a failing channel that `notify status` names (exit 1) and
    the audit records."""
    secret = secrets.token_urlsafe(24)
    coord = CoordinatorProcess(tmp_path)
    (coord.data / "notify.toml").write_text(
        "poll_seconds = 0.2\nunhealthy_after = 2\nbackoff_seconds = 0.5\n")
    coord.start()
    try:
        with WebhookReceiver(secret) as hook:
            missing = coord.cli("notify", "channels", "add", "ops-hook", "--kind", "webhook",
                                "--url", hook.url, "--secret-env", "NO_SUCH_VAR", check=False)
            assert missing.returncode == 1
            assert "NO_SUCH_VAR is not set" in missing.stderr
            assert "Traceback" not in missing.stderr
            monkeypatch.setenv("HOOK_SECRET", secret)
            coord.cli("notify", "channels", "add", "ops-hook", "--kind", "webhook", "--url",
                      hook.url, "--secret-env", "HOOK_SECRET", "--rate", "0")
            tested = coord.cli("notify", "channels", "test", "ops-hook")
            assert tested["ok"]
            assert hook.received[-1]["event"] == "test"

            with coord.client() as client:
                client.call("customers.add", name="Minh Anh")
                viewer = client.call("technicians.add", name="viewer1", role="viewer")["token"]
                # Not the monthly care report (the default's fourth event): this test must not
                # depend on the day of the month (tests/notify/test_care_report_mail.py).
                events = "coverage.ending,update.installed,visit.created"
                optin = client.call("notify.customers.optin", customer="Minh Anh",
                                    channel="ops-hook", address="ketoan@minhanh.vn", events=events)
                assert optin["route"]["events"] == events
                client.call("notify.recipients.add", name="ops", channel="ops-hook",
                            language="en", workdays="mon,tue,wed,thu,fri,sat,sun",
                            opens="00:00", closes="23:59")
                client.call("notify.routes.add", recipient="ops", events="incident.opened",
                            min_severity="critical")
            assert "secret" not in json.dumps(coord.cli("notify", "recipients", "list"))
            denied = coord.cli("notify", "routes", "add", "--recipient", "ops", token=viewer,
                               check=False)
            assert denied.returncode == 1
            assert "needs the admin role" in denied.stderr
            assert coord.cli("notify", "status", token=viewer)["unhealthy"] == []
            refused = coord.cli("notify", "channels", "remove", "ops-hook", check=False)
            assert refused.returncode == 1
            assert "recipients use this channel" in refused.stderr

            # The receiver breaks: a critical incident's message fails twice -> unhealthy.
            hook.status = 500
            agent_id = _enroll_one(coord)
            coord.cli("incidents", "open", "--machine", agent_id, "--category", "other",
                      "--severity", "critical", "--note", "server room flooded")
            wait_until(lambda: coord.cli("notify", "status")["unhealthy"] == ["ops-hook"], timeout=20)
            status = run([PYTHON, "-m", "careline.coordinator.cli", "notify", "status", "--data",
                          str(coord.data)], check=False)  # for people: a table, and exit 1
            assert status.returncode == 1
            assert "unhealthy channels: ops-hook" in status.stderr
            assert any(a["action"] == "notify.channel.unhealthy" for a in coord.cli("audit"))
            # ... and recovers: the retry is delivered once, the audit says so.
            hook.status = 200
            wait_until(lambda: any(m["event"] == "incident.opened" for m in hook.received),
                       timeout=20)
            wait_until(lambda: coord.cli("notify", "status")["unhealthy"] == [], timeout=10)
            assert any(a["action"] == "notify.channel.recovered" for a in coord.cli("audit"))
            # The visit went to the customer's contact, the incident to ops: both delivered once.
            wait_until(lambda: [n["status"] for n in coord.cli("notify", "list")] == ["sent"] * 2)
            assert sorted(m["event"] for m in hook.received if m["event"] != "test") == [
                "incident.opened", "visit.created"]
    finally:
        coord.stop()


def _enroll_one(coord: CoordinatorProcess) -> str:
    asyncio.run(_enroll_offline(f"sqlite:///{coord.data / 'careline.db'}", "Minh Anh", 1))
    return str(next(iter(coord.agents())))
