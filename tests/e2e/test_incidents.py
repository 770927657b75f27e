"""Issue 3 end to end: a tampered product file reported by a real agent opens an incident;
the decision depends on the machine's coverage, and `explain` says why."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from careline.shared.manifest import MANIFEST_NAME, build_manifest, encode_manifest
from tests.conftest import wait_until


def make_product(root: Path) -> Path:
    product = root / "KeToan"
    (product / "forms").mkdir(parents=True)
    (product / "ketoan.bin").write_bytes(b"accounting program v1")
    (product / "forms" / "vat-01.xml").write_text("<form>VAT 01</form>")
    manifest = build_manifest(product, "KeToan", "2026.1")
    (product / MANIFEST_NAME).write_bytes(encode_manifest(manifest))
    return product


def open_incidents(coordinator, agent_id: str) -> list[dict]:
    return coordinator.cli("incidents", "list", "--open", "--machine", agent_id)


def test_tampered_file_opens_incident_decided_by_coverage(coordinator, spawn_agent, tmp_path):
    today = dt.datetime.now(dt.UTC).date()
    coordinator.cli("customers", "add", "Covered Co")
    coordinator.cli("customers", "add", "Lapsed Co")
    covered = coordinator.cli("contracts", "add", "--customer", "Covered Co", "--signed",
                              today.isoformat())
    lapsed = coordinator.cli("contracts", "add", "--customer", "Lapsed Co", "--signed",
                             (today - dt.timedelta(days=800)).isoformat())
    machines = {}
    for name, customer, contract in (("good", "Covered Co", covered), ("old", "Lapsed Co", lapsed)):
        product = make_product(tmp_path / name)
        (product / "forms" / "vat-01.xml").write_text("<form>EVIL</form>")  # tampered
        (product / "dropper.exe").write_bytes(b"MZ")  # unexpected file
        with coordinator.client() as client:
            join = client.call("tokens.create", customer=customer, uses=1,
                               expires_seconds=600, contract=contract["id"])["join"]
        machines[name] = spawn_agent(name, join, "--product", f"KeToan={product}")

    entitlement = coordinator.cli("entitlement", machines["good"].agent_id)
    assert entitlement["label"] == "warranty"
    assert entitlement["includes"]["remote_fixes"]
    assert coordinator.cli("entitlement", machines["old"].agent_id)["label"] == "not_covered"

    good = wait_until(lambda: open_incidents(coordinator, machines["good"].agent_id))
    old = wait_until(lambda: open_incidents(coordinator, machines["old"].agent_id))
    assert len(good) == 1
    assert len(old) == 1
    assert good[0]["kind"] == "integrity_mismatch"
    assert good[0]["category"] == "virus"
    assert good[0]["action"] == "remote_reinstall"
    assert good[0]["fee_vnd"] == 0
    assert old[0]["action"] == "onsite_reinstall"
    assert old[0]["fee_vnd"] == 500_000

    explained = coordinator.cli("incidents", "explain", str(old[0]["id"]))
    assert explained["covered"] is False
    assert "not covered" in explained["reasons"][0].lower()
    assert any("500,000" in r or "500000" in r for r in explained["reasons"])
    shown = coordinator.cli("incidents", "show", str(good[0]["id"]))
    assert "vat-01.xml" in shown["detail"]
    assert "dropper.exe" in shown["detail"]

    # Repeated heartbeats with the same problem bump the one incident, never open another.
    wait_until(lambda: coordinator.cli("incidents", "show", str(good[0]["id"]))["signals"] >= 3)
    assert len(open_incidents(coordinator, machines["good"].agent_id)) == 1

    visits = coordinator.cli("visits", "list")
    assert [v["incident_id"] for v in visits] == [old[0]["id"]]
    assert visits[0]["fee_vnd"] == 500_000
    coordinator.cli("visits", "assign", str(visits[0]["id"]), "--technician", "admin")
    done = coordinator.cli("visits", "complete", str(visits[0]["id"]), "--note", "reinstalled")
    assert done["status"] == "completed"
    resolved = coordinator.cli("incidents", "resolve", str(old[0]["id"]), "--note", "reinstalled")
    assert resolved["status"] == "resolved"
    actions = {a["action"] for a in coordinator.cli("audit")}
    assert {"incident.open", "visit.assign", "visit.complete", "incident.resolve"} <= actions


def test_technician_reported_incident_and_maintenance(sqlite_coordinator, spawn_agent, tmp_path):
    coord = sqlite_coordinator
    today = dt.datetime.now(dt.UTC).date()
    coord.cli("customers", "add", "Renewed Co")
    contract = coord.cli("contracts", "add", "--customer", "Renewed Co", "--signed",
                         (today - dt.timedelta(days=400)).isoformat())
    join = coord.join_string("Renewed Co", uses=1)
    agent = spawn_agent("pc", join, start=False)
    assert coord.cli("entitlement", agent.agent_id)["label"] == "not_covered"
    coord.cli("maintenance", "add", "--contract", str(contract["id"]),
              "--start", (today - dt.timedelta(days=30)).isoformat(),
              "--end", (today + dt.timedelta(days=10)).isoformat(), "--tier", "premium")
    entitlement = coord.cli("entitlement", agent.agent_id)
    assert entitlement["label"] == "maintenance:premium"
    assert entitlement["expiring_soon"]
    expiring = coord.cli("report", "expiring", "--within", "30d")
    assert [row["machine"] for row in expiring] == [agent.agent_id]
    refused = coord.cli("maintenance", "add", "--contract", str(contract["id"]), "--start",
                        today.isoformat(), "--end", today.isoformat(), "--tier", "gold",
                        check=False)
    assert refused.returncode == 1
    assert "unknown tier" in refused.stderr

    # A disk failure reported by phone: on-site reinstall, fee waived by the premium tier.
    incident = coord.cli("incidents", "open", "--machine", agent.agent_id, "--category", "disk",
                         "--severity", "high", "--note", "clicking noise")
    decision = incident["decision"]
    assert decision["action"] == "onsite_reinstall"
    assert decision["fee_vnd"] == 0
    assert decision["quote_vnd"] == 500_000
    due = dt.datetime.fromisoformat(decision["due_at"])
    assert due > dt.datetime.now(dt.UTC)
    assert json.dumps(decision["reasons"]).count("premium") >= 1
    # Decided again (e.g. after coverage changed): a new decision, audited.
    again = coord.cli("incidents", "redecide", str(incident["id"]))
    assert again["action"] == "onsite_reinstall"
    assert again["id"] != decision["id"]
    assert any(a["action"] == "incident.redecide" and a["detail"]["decided"] == "onsite_reinstall"
               for a in coord.cli("audit"))


def test_condition_that_clears_closes_untouched_incident(sqlite_coordinator, spawn_agent, tmp_path):
    coord = sqlite_coordinator
    product = make_product(tmp_path / "p")
    original = (product / "ketoan.bin").read_bytes()
    (product / "ketoan.bin").write_bytes(b"patched by a virus")
    agent = spawn_agent("pc", coord.join_string(), "--product", f"KeToan={product}", start=False)
    config_file = agent.state / "agent.json"
    config = json.loads(config_file.read_text())
    config["verify_interval"] = 0.5  # re-check files at every heartbeat
    config_file.write_text(json.dumps(config))
    agent.start()
    incident = wait_until(lambda: open_incidents(coord, agent.agent_id))[0]
    (product / "ketoan.bin").write_bytes(original)  # the technician's fix, done by hand
    closed = wait_until(lambda: coord.cli("incidents", "show", str(incident["id"]))["status"]
                        == "resolved")
    assert closed
    shown = coord.cli("incidents", "show", str(incident["id"]))
    assert shown["resolution"] == "condition cleared"
    assert open_incidents(coord, agent.agent_id) == []


def test_offline_too_long_opens_and_return_closes(tmp_path, spawn_agent):
    from tests.conftest import CoordinatorProcess

    policy = tmp_path / "vendor-policy.toml"
    policy.write_text("[machine]\noffline_incident_after_minutes = 0.05\n"  # 3 seconds
                      "offline_counts = \"wall_clock\"\n")  # whatever the time of day
    coord = CoordinatorProcess(tmp_path).start("--policy", str(policy))
    try:
        coord.cli("customers", "add", "Chuoi")
        site = coord.cli("sites", "add", "--customer", "Chuoi", "Chi nhanh Ha Noi")
        assert [s["name"] for s in coord.cli("sites", "list", "--customer", "Chuoi")] == [
            "Chi nhanh Ha Noi"]
        with coord.client() as client:
            join = client.call("tokens.create", customer="Chuoi", expires_seconds=600,
                               site=str(site["id"]))["join"]
        agent = spawn_agent("pc", join)
        wait_until(lambda: coord.agents()[agent.agent_id]["status"] == "online")
        assert coord.agents()[agent.agent_id]["site"] == "Chi nhanh Ha Noi"
        agent.kill()
        incident = wait_until(lambda: open_incidents(coord, agent.agent_id), timeout=30)[0]
        assert (incident["kind"], incident["category"]) == ("agent_offline", "other")
        agent.start()
        wait_until(lambda: coord.cli("incidents", "show", str(incident["id"]))["status"]
                   == "resolved", timeout=30)
        refused = coord.cli("sites", "add", "--customer", "Chuoi", "Chi nhanh Ha Noi",
                            check=False)
        assert refused.returncode == 1
        assert "already exists" in refused.stderr
    finally:
        coord.stop()
