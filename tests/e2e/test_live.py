"""Issue 8 end to end: ping a mixed fleet, diagnose with a size cap, restart a real product
process, and roles (a viewer may ping and read, not act)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil

from tests.conftest import PYTHON, run, wait_until

APP = "import time\nwhile True:\n    time.sleep(1)\n"


def test_ping_mixed_fleet(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    join = coord.join_string("Ping Co", uses=3)
    online = spawn_agent("online", join)
    killed = spawn_agent("killed", join)
    revoked = spawn_agent("revoked", join)
    wait_until(lambda: all(coord.agents()[a.agent_id]["status"] == "online"
                           for a in (online, killed, revoked)))
    killed.kill()
    coord.cli("agents", "revoke", revoked.agent_id)
    wait_until(lambda: coord.agents()[killed.agent_id]["status"] == "offline")

    started = time.monotonic()
    answers = {a["machine"]: a for a in coord.cli("agents", "ping", "--all", "--timeout", "3s")}
    assert time.monotonic() - started < 10
    assert answers[online.agent_id]["status"] == "ok"
    assert 0 < answers[online.agent_id]["rtt_ms"] < 3000
    assert answers[killed.agent_id]["status"] == "offline"
    assert answers[revoked.agent_id]["status"] == "revoked"

    text = run([PYTHON, "-m", "careline.coordinator.cli", "agents", "ping", "--customer", "Ping Co",
                "--data", str(coord.data)]).stdout
    assert "3 machines: " in text
    assert "ok 1" in text
    assert "offline 1" in text
    refused = coord.cli("agents", "ping", "--machine", online.agent_id, "--all", check=False)
    assert refused.returncode == 1
    assert "exactly one" in refused.stderr


def test_ping_a_connected_agent_that_does_not_answer(sqlite_coordinator, spawn_agent):
    coord = sqlite_coordinator
    join = coord.join_string("Frozen Co", uses=2)
    awake, frozen = spawn_agent("awake", join), spawn_agent("frozen", join)
    wait_until(lambda: all(coord.agents()[a.agent_id]["status"] == "online"
                           for a in (awake, frozen)))
    frozen.proc.send_signal(signal.SIGSTOP)  # its connection stays open; nothing answers
    try:
        started = time.monotonic()
        answers = {a["machine"]: a for a in coord.cli(
            "agents", "ping", "--customer", "Frozen Co", "--timeout", "1s")}
        assert time.monotonic() - started < 5
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    assert answers[awake.agent_id]["status"] == "ok"
    assert answers[frozen.agent_id]["status"] == "no answer"
    assert answers[frozen.agent_id]["timeout"] == 1.0
    assert len(answers) == 2


def test_diagnose_bundle_and_size_cap(sqlite_coordinator, spawn_agent, tmp_path):
    coord = sqlite_coordinator
    product = tmp_path / "Luong"
    product.mkdir()
    (product / "luong.log").write_text("".join(f"line {i} " + "x" * 80 + "\n" for i in range(5000)))
    agent = spawn_agent("pc", coord.join_string(), "--product", f"Luong={product}",
                        "--product-log", "Luong=luong.log")
    wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")
    out = tmp_path / "bundle.json"
    result = coord.cli("diagnose", "--machine", agent.agent_id, "--lines", "100", "--out", str(out))
    bundle = json.loads(out.read_text())
    assert {"system", "disks", "products", "logs", "smart_failing"} <= set(bundle)
    assert bundle["products"]["Luong"]["running"] is False
    assert bundle["logs"]["Luong"][-1].startswith("line 4999 ")
    assert len(bundle["logs"]["Luong"]) <= 100
    assert "agent" in bundle["logs"]

    with coord.client() as client:
        small = client.call("agents.diagnose", machine=agent.agent_id, log_lines=5000,
                            max_bytes=8192)["bundle"]
    assert len(json.dumps(small)) <= 8192
    assert small["logs"]["Luong"]
    assert len(small["logs"]["Luong"]) < 5000
    stored = coord.cli("diagnostics", "list", "--machine", agent.agent_id)
    assert [d["id"] for d in stored] == [result["id"] + 1, result["id"]]
    shown = coord.cli("diagnostics", "show", str(result["id"]))
    assert shown["bundle"]["logs"]["Luong"] == bundle["logs"]["Luong"]


def test_restart_product_and_roles(sqlite_coordinator, spawn_agent, tmp_path):
    coord = sqlite_coordinator
    product = tmp_path / "Kho"
    product.mkdir()
    (product / "app.py").write_text(APP)
    agent = spawn_agent("pc", coord.join_string(), "--product", f"Kho={product}",
                        "--product-exec", f"Kho={sys.executable} app.py")
    app = subprocess.Popen([sys.executable, str(product / "app.py")], start_new_session=True)
    try:
        wait_until(lambda: coord.agents()[agent.agent_id]["products"].get("Kho", {}).get("running"))
        viewer = coord.cli("technicians", "add", "vy", "--role", "viewer")["token"]
        assert coord.cli("agents", "ping", "--machine", agent.agent_id, token=viewer)
        refused = coord.cli("restart-product", "--machine", agent.agent_id, "--product", "Kho",
                            token=viewer, check=False)
        assert refused.returncode == 1
        assert "technician role" in refused.stderr
        assert app.poll() is None  # untouched

        result = coord.cli("restart-product", "--machine", agent.agent_id, "--product", "Kho")
        assert result["pids_before"] == [app.pid]
        assert result["running"]
        assert result["pids_after"]
        assert app.pid not in result["pids_after"]
        app.wait(10)
        new = psutil.Process(result["pids_after"][0])
        assert new.is_running()
        assert str(product / "app.py") in new.cmdline()
        unknown = coord.cli("restart-product", "--machine", agent.agent_id, "--product", "Nope",
                            check=False)
        assert unknown.returncode == 1
        assert "not watched" in unknown.stderr
        audit = coord.cli("audit")
        assert any(a["action"] == "agents.restart_product" and a["actor"] == "local-admin"
                   and a["detail"]["running"] for a in audit)
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if str(product / "app.py") in (proc.info["cmdline"] or []):
                proc.kill()
