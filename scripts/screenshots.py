"""Screenshots of the web console (English and Vietnamese) and a page image of the care report.

Starts a throw-away coordinator with the web console, enrolls three real agents, publishes and
pushes a release, opens incidents, then photographs the main pages with Debian's chromium.
Run through scripts/screenshots.sh; everything stays on 127.0.0.1 and in a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PYTHON = sys.executable
CLI = [PYTHON, "-m", "careline.coordinator.cli"]
AGENT = [PYTHON, "-m", "careline.agent.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def wait(predicate: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError("the demo fleet did not get ready in time")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="careline-shots-"))
    data, port, web = tmp / "data", free_port(), free_port()
    procs: list[subprocess.Popen[str]] = []

    def cli(*args: str) -> Any:
        text = run(*CLI, *args, "--data", str(data), "--json")
        return json.loads(text) if text.strip() else None

    try:
        admin = json.loads(run(*CLI, "init", "--data", str(data), "--listen", f"127.0.0.1:{port}",
                               "--heartbeat-interval", "2", "--json"))["admin_token"]
        procs.append(subprocess.Popen([*CLI, "serve", "--data", str(data), "--web", f"127.0.0.1:{web}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
        wait(lambda: _listening(web) and _listening(port))
        keys, src = tmp / "keys", tmp / "src"
        (src / "bin").mkdir(parents=True)
        (src / "bin" / "ketoan.txt").write_text("KeToan 2026.2\n")
        cli("release", "keys", "init", "--keys", str(keys))
        package = tmp / "KeToan-2026.2.careline"
        run(*CLI, "release", "build", str(src), "--product", "KeToan", "--version", "2026.2",
            "--kind", "bugfix", "--notes", "Sửa lỗi in hóa đơn", "--out", str(package))
        cli("release", "publish", str(package), "--keys", str(keys))
        # Real agents: each reports this computer's own hostname.
        for customer, hosts in (("Công ty Minh Anh", ["pc1", "pc2"]), ("Nhà sách Hòa Bình", ["pc3"])):
            cli("customers", "add", customer)
            cli("contracts", "add", "--customer", customer, "--signed", "2026-01-05")
            join = cli("tokens", "create", "--customer", customer, "--uses", "5")["join"]
            for host in hosts:
                state = tmp / host
                # Several "PCs" on one host: each its own hardware identity (as scripts/demo.sh).
                hardware = {**os.environ, "CARELINE_AGENT_HARDWARE":
                            json.dumps({"uuid": f"shots-{host}", "disk": f"disk-{host}"})}
                subprocess.run([*AGENT, "enroll", join, "--state", str(state), "--product",
                                f"KeToan={tmp / (host + '-app')}", "--product-data", "KeToan=Data"],
                               env=hardware, check=True, capture_output=True, timeout=60)
                procs.append(subprocess.Popen([*AGENT, "run", "--state", str(state)], env=hardware,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        agents = wait(lambda: [a for a in cli("agents", "list") if a["status"] == "online"]
                      if len([a for a in cli("agents", "list") if a["status"] == "online"]) == 3 else None)
        first = agents[0]["id"]
        job = cli("push", "update", "--machine", first, "--version", "2026.2")
        wait(lambda: all(m["status"] == "installed" for m in cli("jobs", "show", str(job["id"]))["machines"]))
        incident = cli("incidents", "open", "--machine", agents[1]["id"], "--category", "disk",
                       "--severity", "high", "--note", "Máy báo lỗi ổ cứng")
        cli("incidents", "open", "--machine", agents[2]["id"], "--category", "bug", "--severity",
            "medium", "--note", "Không in được hóa đơn")
        release = cli("releases", "list")[0]
        rollout = cli("rollouts", "start", "--release", str(release["id"]), "--customer",
                      "Nhà sách Hòa Bình")
        visit = cli("visits", "list")[0]
        cli("visits", "assign", str(visit["id"]), "--technician", "admin")
        month = time.strftime("%Y-%m")
        pdf = out / "care-report.pdf"
        cli("report", "care", "--customer", "Công ty Minh Anh", "--month", month, "--out", str(pdf))
        run("pdftoppm", "-png", "-r", "70", "-f", "1", "-l", "1", "-singlefile", str(pdf),
            str(out / "care-report"))
        pages = {"fleet": "/fleet", "customer": "/customers/1", "machine": f"/machines/{first}",
                 "incidents": "/incidents", "incident": f"/incidents/{incident['id']}",
                 "visits": "/visits", "rollout": f"/rollouts/{rollout['id']}",
                 "expiring": "/contracts/expiring?within=60", "audit": "/audit"}
        _photograph(f"https://127.0.0.1:{web}", admin, pages, out)
        print(f"screenshots in {out}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _photograph(url: str, token: str, pages: dict[str, str], out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for lang in ("en", "vi"):
            context = browser.new_context(ignore_https_errors=True, locale=lang,
                                          viewport={"width": 1200, "height": 760},
                                          extra_http_headers={"Accept-Language": lang})
            page = context.new_page()
            page.goto(url + "/signin")
            page.fill("#token", token)
            page.click("#signin")
            page.wait_for_url(re.compile(r".*/fleet$"))
            for name, path in pages.items():
                page.goto(url + path)
                page.screenshot(path=str(out / f"{name}-{lang}.png"), full_page=True)
            context.close()
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots"))
