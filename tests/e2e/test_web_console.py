"""The web console in a real headless Chromium against a real coordinator (issue 15).

Chromium is Debian's (`/usr/bin/chromium`, installed by scripts/test.sh), driven by Playwright;
the agents are real `careline-agent` processes, and the hostile hostname comes through the real
/enroll exchange.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from careline.shared.keys import JoinString, generate_key, public_bytes
from tests.conftest import CoordinatorProcess, free_port, wait_for_port, wait_until
from tests.e2e.test_updates import build, enroll, job_done, machine, publish

CHROMIUM = "/usr/bin/chromium"
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (scripts/test.sh installs it)")


class Console:
    def __init__(self, coord: CoordinatorProcess, port: int) -> None:
        self.coord = coord
        self.url = f"https://127.0.0.1:{port}"


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    coord = CoordinatorProcess(tmp_path)
    port = free_port()
    coord.start("--web", f"127.0.0.1:{port}")
    wait_for_port(port, coord.proc)  # type: ignore[arg-type]
    yield Console(coord, port)
    coord.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def new_page(browser: Any, lang: str = "en-US") -> Any:
    context = browser.new_context(ignore_https_errors=True, locale=lang,
                                  extra_http_headers={"Accept-Language": lang})
    return context.new_page()


def sign_in(page: Any, console: Console, token: str) -> None:
    page.goto(console.url + "/fleet")
    assert page.url.endswith("/signin")
    page.fill("#token", token)
    page.click("#signin")
    page.wait_for_url(re.compile(r".*/fleet$"))


def hostile_enrollment(join: str) -> str:
    """A modified agent: the real /enroll exchange, with a hostname that is markup."""
    from careline.agent.enroll import register

    _, enrolled = in_thread(register(JoinString.parse(join), public_bytes(generate_key()),
                                     hostname=HOSTILE, os="Windows 10", products=[]))
    return enrolled.agent_id


def in_thread(coroutine: Any) -> Any:
    """Run a coroutine to its end beside Playwright's event loop, which holds this thread."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """A fresh PostgreSQL database, as conftest's pg_url makes one but beside Playwright's
    loop; skipped (or failed under CARELINE_REQUIRE_PG) the same way when there is none."""
    import os
    import uuid

    import asyncpg

    from tests.conftest import PG_ADMIN_URL

    name = f"careline_t_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        in_thread(admin(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        if os.environ.get("CARELINE_REQUIRE_PG"):
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} unreachable ({exc}); set CARELINE_TEST_PG")
    yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    in_thread(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_technician_works_an_incident_and_pushes_an_update_viewer_is_refused(
        console: Console, browser: Any, tmp_path: Path, spawn_agent: Any) -> None:
    coord = console.coord
    keys = tmp_path / "release-keys"
    coord.cli("release", "keys", "init", "--keys", str(keys))
    publish(coord, keys, build(tmp_path, "1.0.0"))
    coord.cli("customers", "add", "Cong ty Minh Anh")
    coord.cli("contracts", "add", "--customer", "Cong ty Minh Anh", "--signed", "2026-01-15")
    join = coord.join_string("Cong ty Minh Anh")
    pc1 = enroll(spawn_agent, tmp_path, "pc1", join)
    hostile = hostile_enrollment(join)
    tech_token = coord.cli("technicians", "add", "lan", "--role", "technician")["token"]
    viewer_token = coord.cli("technicians", "add", "mai", "--role", "viewer")["token"]
    wait_until(lambda: coord.agents()[pc1.agent_id]["status"] == "online")
    incident = coord.cli("incidents", "open", "--machine", hostile, "--category", "disk",
                         "--severity", "high", "--note", "customer called")

    page = new_page(browser)
    sign_in(page, console, tech_token)
    # Session cookie: HttpOnly, Secure, SameSite=Strict; the token itself is not kept.
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["careline_session"]
    assert (session["httpOnly"], session["secure"], session["sameSite"]) == (True, True, "Strict")
    assert tech_token not in json.dumps(list(cookies.values()))

    # Fleet overview, with live counters.
    row = page.locator("#customers tr", has_text="Cong ty Minh Anh")
    assert row.locator("td").nth(1).inner_text() == "2"
    assert page.locator("[data-live=total-online]").inner_text() == "1"

    # The hostile hostname is text, never markup, wherever it shows.
    page.goto(f"{console.url}/machines/{hostile}")
    assert page.locator("#hostname").inner_text() == HOSTILE
    assert page.evaluate("window.pwned") is None

    # An incident: decision, fee in VND, due time, reasons; assign its visit.
    page.goto(f"{console.url}/incidents")
    page.click(f"a[href='/incidents/{incident['id']}']")
    assert page.locator("#decision-action").inner_text() == "onsite_reinstall"
    assert page.locator("#decision-fee").inner_text().replace("\xa0", " ") == "500.000 ₫"
    assert page.locator("ol.reasons li").count() >= 1
    visit = page.locator("div.visit").first
    visit.locator("select.assign-technician").select_option("lan")
    visit.locator("button[data-method='visits.assign']").click()
    assert "visits.assign" in page.locator(".flash.ok").inner_text()
    visits = coord.cli("visits", "list")
    assert [(v["technician"], v["status"]) for v in visits] == [("lan", "assigned")]

    # Push an update to pc1 from its page; the agent installs it.
    page.goto(f"{console.url}/machines/{pc1.agent_id}")
    assert page.locator("#disks tbody tr").count() >= 1  # its health report
    assert page.locator("#health-history tbody tr").count() >= 1  # and its history, drawn too
    assert page.locator("#health-spark polyline.cpu").get_attribute("points")
    page.select_option("#push-version", "1.0.0")
    page.click("button[data-method='push.update']")
    assert "push.update" in page.locator(".flash.ok").inner_text()
    job = coord.cli("jobs", "list")[0]
    assert machine(job_done(coord, job["id"]), pc1.agent_id)["status"] == "installed"
    page.reload()
    assert "installed" in page.locator("#jobs tbody tr").first.inner_text()

    # Every action is audited as the technician, exactly as from the CLI.
    audit = coord.cli("audit")
    assert {("lan", "visit.assign"), ("lan", "job.update")} <= {(a["actor"], a["action"]) for a in audit}

    # This month's care report, through the running coordinator: the machines, the visit's
    # fee, the update, in Vietnamese with its font embedded.
    from pypdf import PdfReader

    out = tmp_path / "care.pdf"
    # This month in the customer's time zone (from 17:00 UTC on the last day of a month it
    # is already the next month in Vietnam, and the visit is in that one).
    (customer,) = [c for c in coord.cli("customers", "list") if c["name"] == "Cong ty Minh Anh"]
    month = dt.datetime.now(ZoneInfo(customer["timezone"])).strftime("%Y-%m")
    coord.cli("report", "care", "--customer", "Cong ty Minh Anh", "--month", month,
              "--out", str(out))
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(out).pages).split())
    for expected in ("Báo cáo chăm sóc", "Cong ty Minh Anh", HOSTILE, "500.000", "acct 1.0.0",
                     "cài lại tại chỗ", "Bảo hành"):
        assert expected in text, expected

    # A viewer sees the same page, and is refused the same action by the server.
    viewer = new_page(browser)
    sign_in(viewer, console, viewer_token)
    viewer.goto(f"{console.url}/machines/{pc1.agent_id}")
    viewer.click("button[data-method='push.update']")
    assert "technician role" in viewer.locator("#error").inner_text()
    assert len(coord.cli("jobs", "list")) == 1
    assert ("mai", "admin.refused", "method:push.update") in {
        (a["actor"], a["action"], a["target"]) for a in coord.cli("audit")}

    # Sign out: the old session cookie no longer opens anything.
    page.click("#signout")
    page.wait_for_url(re.compile(r".*/signin$"))
    page.context.add_cookies([{"name": session["name"], "value": session["value"],
                               "url": console.url}])
    page.goto(console.url + "/fleet")
    assert page.url.endswith("/signin")


def test_an_incidents_reasons_in_the_viewers_language_money_and_zone(console: Console, browser: Any) -> None:
    coord = console.coord
    coord.cli("customers", "add", "Cong ty Minh Anh")
    coord.cli("contracts", "add", "--customer", "Cong ty Minh Anh", "--signed", "2026-01-15")
    pc = hostile_enrollment(coord.join_string("Cong ty Minh Anh"))
    token = coord.cli("technicians", "add", "lan", "--role", "technician")["token"]
    incident = coord.cli("incidents", "open", "--machine", pc, "--category", "disk",
                         "--severity", "high")
    english = coord.cli("incidents", "explain", str(incident["id"]))["reasons"]
    assert english[2].startswith("Billable 500,000 VND: warranty does not include")  # the CLI's text

    def reasons(lang: str) -> list[str]:
        context = browser.new_context(ignore_https_errors=True, locale=lang, timezone_id="Asia/Tokyo",
                                      extra_http_headers={"Accept-Language": lang})
        page = context.new_page()
        sign_in(page, console, token)
        page.goto(f"{console.url}/incidents/{incident['id']}")
        shown = [t.replace("\xa0", " ") for t in page.locator("ol.reasons li").all_inner_texts()]
        # The customer's page: its machine with the same coverage (one batched pass).
        page.goto(f"{console.url}/customers/{incident['customer_id']}")
        shown.append(page.locator("#machines tbody tr").first.inner_text())
        context.close()
        return shown

    vi = reasons("vi-VN")
    assert "bảo hành đến" in vi.pop()
    assert len(vi) == len(english) == 4
    assert vi[0].startswith("Được bảo hành đến hết ngày ")
    assert vi[1].startswith("Quy tắc rules[")
    assert vi[1].endswith(english[1].partition(": ")[2])
    assert vi[2] == "Tính phí 500.000 ₫: bảo hành không bao gồm miễn phí cài lại tại chỗ"
    assert vi[3].startswith("Hạn ")
    assert "(Asia/Tokyo)" in vi[3]
    assert not any(word in " ".join(vi) for word in ("Covered", "Billable", "Due "))
    en = reasons("en-US")
    assert "warranty until" in en.pop()
    assert en[:2] == english[:2]
    assert en[2] == english[2].replace("500,000 VND", "500.000 ₫")
    assert "Asia/Tokyo" in en[3]
    assert "Asia/Ho_Chi_Minh" in english[3]


def test_revoked_technician_csrf_and_the_rest_api(console: Console, browser: Any) -> None:
    coord = console.coord
    coord.cli("customers", "add", "Acme")
    tech_token = coord.cli("technicians", "add", "lan", "--role", "technician")["token"]
    viewer_token = coord.cli("technicians", "add", "mai", "--role", "viewer")["token"]
    page = new_page(browser, "vi-VN")
    sign_in(page, console, tech_token)
    assert page.locator("nav a").first.inner_text() == "Tổng quan"  # Vietnamese from the browser
    page.click("header button[name=lang]")  # English, remembered for lan's next sign-in
    assert page.locator("nav a").first.inner_text() == "Fleet"
    again = new_page(browser, "vi-VN")
    sign_in(again, console, tech_token)
    assert again.locator("nav a").first.inner_text() == "Fleet"

    # Every list answers, with its filters and past its last page.
    for path in ("/rollouts", "/contracts/expiring?within=60", "/visits?show=overdue&technician=lan",
                 "/visits?show=today", "/audit?actor=lan&page=2", "/incidents?open=0&page=9",
                 "/customers/1", "/static/console.css"):
        assert page.goto(console.url + path).status == 200, path
    assert page.goto(console.url + "/customers/999").status == 404

    # The customer page's care report link downloads the PDF.
    page.goto(f"{console.url}/customers/1")
    with page.expect_download() as download:
        page.click("#care-report button[value=pdf]")
    assert download.value.suggested_filename.endswith(".pdf")
    assert Path(download.value.path()).read_bytes().startswith(b"%PDF")

    # A form post without the CSRF token is refused, and nothing happens.
    answer = page.request.post(f"{console.url}/act/customers.add", form={"name": "Evil"},
                               max_redirects=0)
    assert answer.status == 403
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    answer = page.request.post(f"{console.url}/act/customers.add",
                               form={"name": "Good", "csrf": csrf, "next": "/fleet"}, max_redirects=0)
    assert answer.status == 303
    names = {c["name"] for c in coord.cli("customers", "list")}
    assert "Good" in names
    assert "Evil" not in names

    # REST API: the same methods with the bearer token; OpenAPI lists them.
    api = page.context.request
    listed = api.post(f"{console.url}/api/v1/customers/list", data={},
                      headers={"Authorization": f"Bearer {viewer_token}"})
    assert listed.status == 200
    assert {c["name"] for c in listed.json()} == names
    refused = api.post(f"{console.url}/api/v1/customers/add", data={"name": "Nope"},
                       headers={"Authorization": f"Bearer {viewer_token}"})
    assert refused.status == 403
    assert refused.json()["error_code"] == "forbidden"
    schema = api.get(f"{console.url}/api/v1/schema/openapi.json").json()
    assert "/api/v1/incidents/page" in schema["paths"]
    assert "/api/v1/push/update" in schema["paths"]
    # Methods that only read answer a GET too, their parameters in the query string.
    as_viewer = {"Authorization": f"Bearer {viewer_token}"}
    got = api.get(f"{console.url}/api/v1/customers/list", headers=as_viewer)
    assert got.status == 200
    assert {c["name"] for c in got.json()} == names
    got = api.get(f"{console.url}/api/v1/incidents/page?open=false&limit=5", headers=as_viewer)
    assert got.status == 200
    assert got.json()["total"] == 0
    assert api.get(f"{console.url}/api/v1/incidents/page?limit=x", headers=as_viewer).status == 400
    assert api.get(f"{console.url}/api/v1/customers/add?name=Nope", headers=as_viewer).status == 405
    assert api.get(f"{console.url}/api/v1/customers/list").status == 401
    paths = schema["paths"]
    assert [q["name"] for q in paths["/api/v1/incidents/page"]["get"]["parameters"]] == [
        "open", "customer", "machine", "limit", "offset"]
    assert "get" not in paths["/api/v1/customers/add"]
    assert "get" not in paths["/api/v1/profile/language"]

    # The admin revokes lan: the open session stops working at the next request.
    coord.cli("technicians", "revoke", "lan")
    page.goto(console.url + "/fleet")
    assert page.url.endswith("/signin")
    gone = api.post(f"{console.url}/api/v1/customers/list", data={},
                    headers={"Authorization": f"Bearer {tech_token}"})
    assert gone.status == 401
    refused = [a for a in coord.cli("audit") if a["action"] == "admin.login_refused"]
    assert refused
    assert refused[0]["target"] == "address:127.0.0.1"


def test_a_session_is_known_to_every_coordinator_process(tmp_path: Path, fresh_pg: str,
                                                        browser: Any) -> None:
    """Scale-out: signed in through one process, the browser may reach any other; its
    messages, language and sign-out follow it."""
    first = CoordinatorProcess(tmp_path, fresh_pg)
    first_web, second_web = free_port(), free_port()
    first.start("--web", f"127.0.0.1:{first_web}")
    second = subprocess.Popen(
        [sys.executable, "-m", "careline.coordinator.cli", "serve", "--data", str(first.data),
         "--listen", f"127.0.0.1:{free_port()}", "--web", f"127.0.0.1:{second_web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(first_web, first.proc)  # type: ignore[arg-type]
        wait_for_port(second_web, second)
        token = first.cli("technicians", "add", "lan", "--role", "technician")["token"]
        page = new_page(browser)
        sign_in(page, Console(first, first_web), token)
        other = f"https://127.0.0.1:{second_web}"
        page.goto(other + "/fleet")
        assert page.url == other + "/fleet"
        page.click("header button[name=lang]")  # English -> Vietnamese, made on the second
        page.goto(f"https://127.0.0.1:{first_web}/fleet")
        assert page.locator("nav a").first.inner_text() == "Tổng quan"
        page.click("#signout")
        page.goto(other + "/fleet")
        assert page.url.endswith("/signin")
    finally:
        second.terminate()
        second.wait(10)
        first.stop()
