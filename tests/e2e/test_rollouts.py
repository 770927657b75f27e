"""Issue 7 end to end: a regulation release rolls out to covered machines by itself; one
machine fails its install and pauses the rollout, one is offline and catches up later,
and machines out of coverage are listed for sales instead of updated."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

from careline.shared.manifest import MANIFEST_NAME, build_manifest, encode_manifest
from tests.conftest import PYTHON, CoordinatorProcess, run, wait_until

FAIL_CHECK = (f"{sys.executable} -c \"import os, sys; "
              "sys.exit(1 if os.path.exists('Data/fail') else 0)\"")


def installed_product(root: Path, version: str) -> Path:
    """An install dir of product `acct` at `version`, with a customer data folder."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "app.txt").write_text(f"app {version}\n")
    (root / MANIFEST_NAME).write_bytes(encode_manifest(build_manifest(
        root, "acct", version, exclude=frozenset({"Data"}))))
    (root / "Data").mkdir()
    (root / "Data" / "ledger.db").write_text("customer books")
    return root


def regulation_package(tmp: Path, version: str, effective: dt.date) -> Path:
    src = tmp / f"src-{version}"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app.txt").write_text(f"app {version}\n")
    (src / "forms").mkdir()
    (src / "forms" / "vat-2027.xml").write_text("<form>VAT 2027</form>")
    out = tmp / f"acct-{version}.careline"
    run([PYTHON, "-m", "careline.coordinator.cli", "release", "build", str(src), "--product", "acct",
         "--version", version, "--kind", "regulation", "--regulation-ref", "TT 99/2026/TT-BTC",
         "--effective", effective.isoformat(), "--check", FAIL_CHECK, "--out", str(out)])
    return out


def version_of(install_dir: Path) -> str | None:
    """The installed version; None while an install is switching directories."""
    import json

    try:
        return str(json.loads((install_dir / MANIFEST_NAME).read_text())["version"])
    except FileNotFoundError:
        return None


def rollout(coord: CoordinatorProcess, rollout_id: int) -> dict[str, Any]:
    with coord.client() as client:
        return dict(client.call("rollouts.show", id=rollout_id))


def rollout_reaches(coord: CoordinatorProcess, rollout_id: int, status: str,
                    timeout: float) -> dict[str, Any]:
    """Wait for the rollout to reach `status`; on timeout, fail showing where it stood."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(rollout(coord, rollout_id))
        return seen["status"] == status

    try:
        wait_until(reached, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"rollout never became {status}; last seen: {seen!r}") from None
    return seen


def test_regulation_rollout_pause_resume_catch_up_not_covered(
    sqlite_coordinator, spawn_agent, tmp_path
):
    coord = sqlite_coordinator
    today = dt.datetime.now(dt.UTC).date()
    keys = tmp_path / "keys"
    coord.cli("release", "keys", "init", "--keys", str(keys))
    coord.cli("customers", "add", "Covered")
    coord.cli("customers", "add", "Lapsed")
    coord.cli("contracts", "add", "--customer", "Covered", "--signed", today.isoformat())
    coord.cli("contracts", "add", "--customer", "Lapsed", "--signed",
              (today - dt.timedelta(days=900)).isoformat())
    machines = {}
    for name, customer in (("ok1", "Covered"), ("ok2", "Covered"), ("bad", "Covered"),
                           ("away", "Covered"), ("lapsed", "Lapsed")):
        product = installed_product(tmp_path / name / "acct", "1.0.0")
        agent = spawn_agent(name, coord.join_string(customer, uses=5), "--product",
                            f"acct={product}", "--product-data", "acct=Data")
        agent.product = product
        machines[name] = agent
    (machines["bad"].product / "Data" / "fail").write_text("this machine's check fails")
    wait_until(lambda: all(a["products"].get("acct", {}).get("version") == "1.0.0"
                           for a in coord.agents().values()))
    machines["away"].stop()  # switched off during its wave
    wait_until(lambda: coord.agents()[machines["away"].agent_id]["status"] == "off")  # a clean stop

    published = coord.cli("release", "publish",
                          str(regulation_package(tmp_path, "1.1.0", today + dt.timedelta(days=30))),
                          "--keys", str(keys))
    assert published["kind"] == "regulation"
    auto = coord.cli("rollouts", "list")
    assert len(auto) == 1
    assert auto[0]["release_id"] == published["id"]
    assert auto[0]["started_by"] == "careline (regulation release)"
    shown = rollout(coord, auto[0]["id"])
    assert [w["targeted"] for w in shown["waves"]]
    assert sum(
        w["targeted"] for w in shown["waves"]) == 4
    not_covered = coord.cli("rollouts", "show", str(auto[0]["id"]), "--not-covered")
    assert [m["machine"] for m in not_covered] == [machines["lapsed"].agent_id]
    assert "maintenance:basic" in not_covered[0]["detail"]

    # Deterministic waves for the rest of the story: one wave of every covered machine.
    coord.cli("rollouts", "cancel", str(auto[0]["id"]))
    started = coord.cli("rollouts", "start", "--release", str(published["id"]), "--waves", "100")
    rid = started["id"]
    paused = rollout_reaches(coord, rid, "paused", timeout=60)
    states = {m["machine"]: m["state"] for m in paused["machines"]}
    assert states[machines["bad"].agent_id] == "failed"
    assert states[machines["away"].agent_id] == "offline"
    assert version_of(machines["bad"].product) == "1.0.0"  # rolled back, whole
    incidents = coord.cli("incidents", "list", "--open", "--machine", machines["bad"].agent_id)
    assert [i["kind"] for i in incidents] == ["update_failed"]
    assert incidents[0]["action"] == "remote_guidance"  # retrying the failed update is no fix
    for name in ("ok1", "ok2"):
        wait_until(lambda n=name: version_of(machines[n].product) == "1.1.0")
    assert version_of(machines["lapsed"].product) == "1.0.0"

    # Resuming without fixing anything pauses again; fixing the machine and retrying passes.
    coord.cli("rollouts", "resume", str(rid))
    rollout_reaches(coord, rid, "paused", timeout=30)
    (machines["bad"].product / "Data" / "fail").unlink()
    coord.cli("rollouts", "retry-failed", str(rid))
    wait_until(lambda: version_of(machines["bad"].product) == "1.1.0", timeout=60)
    running = rollout(coord, rid)
    assert running["status"] == "running"  # still waiting for the offline machine

    machines["away"].start()
    wait_until(lambda: version_of(machines["away"].product) == "1.1.0", timeout=60)
    done = rollout_reaches(coord, rid, "completed", timeout=60)
    assert {m["state"] for m in done["machines"] if m["wave"]} == {"installed"}
    assert (machines["away"].product / "Data" / "ledger.db").read_text() == "customer books"
    # The cancelled rollout's canary may have installed already: the coordinator knows it at
    # once (issue 11), so the second rollout leaves that machine out.
    covered = [m for m in done["machines"] if m["wave"]]
    assert len(covered) in (3, 4)
    assert [w["succeeded"] for w in done["waves"]] == [len(covered)]


def test_rollout_survives_coordinator_kill(sqlite_coordinator, spawn_agent, tmp_path):
    coord = sqlite_coordinator
    today = dt.datetime.now(dt.UTC).date()
    keys = tmp_path / "keys"
    coord.cli("release", "keys", "init", "--keys", str(keys))
    coord.cli("customers", "add", "Big Co")
    coord.cli("contracts", "add", "--customer", "Big Co", "--signed", today.isoformat())
    join = coord.join_string("Big Co", uses=6)
    agents = {}
    for n in range(6):
        product = installed_product(tmp_path / f"pc{n}" / "acct", "1.0.0")
        agent = spawn_agent(f"pc{n}", join, "--product", f"acct={product}",
                            "--product-data", "acct=Data")
        agents[agent.agent_id] = product
    wait_until(lambda: all(a["products"].get("acct", {}).get("version") == "1.0.0"
                           for a in coord.agents().values()))
    published = coord.cli("release", "publish",
                          str(regulation_package(tmp_path, "1.1.0", today + dt.timedelta(days=60))),
                          "--keys", str(keys))
    rid = published["rollout"]
    wait_until(lambda: rollout(coord, rid)["sent_waves"] >= 1, timeout=30, interval=0.05)
    coord.kill()  # kill -9 in the middle of the rollout
    coord.start()
    done = rollout_reaches(coord, rid, "completed", timeout=120)
    assert {m["state"] for m in done["machines"]} == {"installed"}
    assert sorted(m["machine"] for m in done["machines"]) == sorted(agents)
    assert sum(w["succeeded"] for w in done["waves"]) == 6
    assert all(w["succeeded"] == w["targeted"] for w in done["waves"])
    with coord.client() as client:
        jobs = [client.call("jobs.show", id=j["id"]) for j in client.call("jobs.list")
                if j["created_by"] == f"rollout:{rid}"]
    sent_to = [m["agent_id"] for job in jobs for m in job["machines"]]
    assert sorted(sent_to) == sorted(agents)  # each machine got the job exactly once
    assert all(version_of(product) == "1.1.0" for product in agents.values())
