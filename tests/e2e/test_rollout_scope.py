"""Issue 11 end to end: a regulation rollout never misses a covered machine.

The exact sequence of the issue (versions made known by the coordinator's own installs,
not by the next 30 s heartbeat), and on two coordinator processes sharing PostgreSQL: a
rollout with nobody to update at publish, machines that enroll late (before and after it
completed), a contract renewed after publish, a machine offline at publish, and one whose
version was unknown and then old.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from typing import Any

from tests.conftest import PYTHON, CoordinatorProcess, run, wait_until
from tests.e2e.test_rollouts import (
    installed_product,
    regulation_package,
    rollout,
    rollout_reaches,
    version_of,
)
from tests.e2e.test_scale_out import join_via, two_coordinators  # noqa: F401 (a fixture)
from tests.e2e.test_updates import build, push_installed


def counts_add_up(shown: dict[str, Any]) -> dict[str, str]:
    """Every machine in scope is listed once, and the counts add up to them."""
    assert sum(shown["counts"].values()) == shown["in_scope"] == len(shown["machines"])
    return {m["machine"]: m["state"] for m in shown["machines"]}


def never_completed_while_missing(shown: dict[str, Any]) -> None:
    if shown["status"] == "completed":
        assert set(counts_add_up(shown).values()) <= {"installed", "not_covered", "retired",
                                                      "failed"}


def test_the_issue_sequence_ends_with_both_machines_on_the_regulation_version(
    tmp_path, spawn_agent
):
    # Heartbeats every 30 s, as in the field: only the coordinator's own install results
    # can make the versions known before the regulation release is published.
    coord = CoordinatorProcess(tmp_path, heartbeat_interval=30.0).start()
    try:
        today = dt.datetime.now(dt.UTC).date()
        keys = tmp_path / "keys"
        coord.cli("release", "keys", "init", "--keys", str(keys))
        coord.cli("customers", "add", "Minh Anh")
        coord.cli("contracts", "add", "--customer", "Minh Anh", "--signed",
                  (today - dt.timedelta(days=30)).isoformat())
        join = coord.join_string("Minh Anh", uses=2)
        pcs = []
        for name in ("pc1", "pc2"):
            agent = spawn_agent(name, join, "--product", f"acct={tmp_path / name / 'acct'}",
                                "--product-data", "acct=Data")
            agent.product = tmp_path / name / "acct"
            pcs.append(agent)
        wait_until(lambda: len(coord.agents()) == 2 and all(
            a["status"] == "online" for a in coord.agents().values()))
        coord.cli("release", "publish", str(build(tmp_path, "1.0.0")), "--keys", str(keys))
        for agent in pcs:
            push_installed(coord, agent, "1.0.0")
        assert {a["products"]["acct"]["version"] for a in coord.agents().values()} == {"1.0.0"}

        published = coord.cli("release", "publish", str(regulation_package(
            tmp_path, "1.1.0", today + dt.timedelta(days=20))), "--keys", str(keys))
        shown = rollout(coord, published["rollout"])
        assert shown["status"] == "running"
        assert sorted(counts_add_up(shown)) == sorted(a.agent_id for a in pcs)
        assert {m["version"] for m in shown["machines"]} == {"1.0.0"}

        # Well before the next heartbeat would even report 1.0.0.
        wait_until(lambda: all(version_of(a.product) == "1.1.0" for a in pcs), timeout=25)
        done = rollout_reaches(coord, published["rollout"], "completed", timeout=20)
        assert set(counts_add_up(done).values()) == {"installed"}
        text = run([PYTHON, "-m", "careline.coordinator.cli", "rollouts", "show",
                    str(published["rollout"]), "--data", str(coord.data)]).stdout
        assert "2 machines in scope: 2 installed" in text
        listed = coord.cli("rollouts", "list")
        assert [(r["in_scope"], r["succeeded"], r["overdue"]) for r in listed] == [(2, 2, 0)]
    finally:
        coord.stop()


def test_late_renewed_offline_and_unknown_machines_join_on_two_processes(
    request, spawn_agent, tmp_path
):
    first, second_port = request.getfixturevalue("two_coordinators")
    today = dt.datetime.now(dt.UTC).date()
    keys = tmp_path / "keys"
    first.cli("release", "keys", "init", "--keys", str(keys))
    first.cli("customers", "add", "Covered")
    first.cli("customers", "add", "Lapsed")
    first.cli("contracts", "add", "--customer", "Covered", "--signed", today.isoformat())
    lapsed = first.cli("contracts", "add", "--customer", "Lapsed", "--signed",
                       (today - dt.timedelta(days=900)).isoformat())

    def agent(name: str, customer: str, port: int, version: str | None) -> Any:
        product = (installed_product(tmp_path / name / "acct", version) if version
                   else tmp_path / name / "acct")
        spawned = spawn_agent(name, join_via(first, port, customer), "--product",
                              f"acct={product}", "--product-data", "acct=Data")
        spawned.product = product
        return spawned

    def reported(agent_id: str, version: str | None) -> bool:
        row = first.agents().get(agent_id, {})
        return row.get("status") == "online" and "acct" in row.get("products", {}) and (
            row["products"]["acct"]["version"] == version)

    # Before publish: a machine to be renewed, one that goes offline, one of unknown version
    # that goes offline too (it comes back with an old version).
    renewed = agent("renewed", "Lapsed", first.port, "1.0.0")
    away = agent("away", "Covered", second_port, "1.0.0")
    unknown = agent("unknown", "Covered", first.port, None)
    wait_until(lambda: reported(renewed.agent_id, "1.0.0") and reported(away.agent_id, "1.0.0")
               and reported(unknown.agent_id, None))
    away.stop()
    unknown.stop()

    published = first.cli("release", "publish", str(regulation_package(
        tmp_path, "1.1.0", today + dt.timedelta(days=30))), "--keys", str(keys))
    rid = published["rollout"]
    shown = rollout(first, rid)
    states = counts_add_up(shown)
    assert states[renewed.agent_id] == "not_covered"
    assert states[away.agent_id] in ("pending", "offline")
    assert states[unknown.agent_id] in ("unknown_version", "offline")
    assert {m["machine"]: m["version"] for m in shown["machines"]}[unknown.agent_id] is None
    wait_until(lambda: rollout(first, rid)["sent_waves"] >= 1)  # the canary is out
    assert rollout(first, rid)["status"] == "running"

    # A machine enrolled after the first waves went out, through the other process.
    late = agent("late", "Covered", second_port, "1.0.0")
    wait_until(lambda: version_of(late.product) == "1.1.0", timeout=30)
    # Renewed after publish: a maintenance package covering the effective date.
    first.cli("maintenance", "add", "--contract", str(lapsed["id"]), "--start",
              (today - dt.timedelta(days=1)).isoformat(), "--end",
              (today + dt.timedelta(days=365)).isoformat(), "--tier", "standard")
    wait_until(lambda: version_of(renewed.product) == "1.1.0", timeout=30)
    # Offline at publish, back now; and the unknown one returns on 1.0.0.
    installed_product(unknown.product, "1.0.0")
    away.start()
    unknown.start()
    wait_until(lambda: version_of(away.product) == version_of(unknown.product) == "1.1.0",
               timeout=40)
    done = rollout_reaches(first, rid, "completed", timeout=30)
    assert counts_add_up(done) == dict.fromkeys(
        (renewed.agent_id, away.agent_id, unknown.agent_id, late.agent_id), "installed")
    assert (away.product / "Data" / "ledger.db").read_text() == "customer books"

    # After it completed, one more machine on the old version enrolls: the rollout reopens.
    after = agent("after", "Covered", first.port, "1.0.0")
    wait_until(lambda: version_of(after.product) == "1.1.0", timeout=30)
    final = rollout_reaches(first, rid, "completed", timeout=30)
    assert counts_add_up(final)[after.agent_id] == "installed"
    assert [a["action"] for a in first.cli("audit", "--limit", "200")].count("rollout.reopen") == 1


def test_a_rollout_with_nobody_to_update_waits_for_its_first_machine(
    sqlite_coordinator, spawn_agent, tmp_path
):
    coord = sqlite_coordinator
    today = dt.datetime.now(dt.UTC).date()
    keys = tmp_path / "keys"
    coord.cli("release", "keys", "init", "--keys", str(keys))
    coord.cli("customers", "add", "Covered")
    coord.cli("contracts", "add", "--customer", "Covered", "--signed", today.isoformat())
    # Effective in 2 days: installs are forced and the deadline watch is on from the start.
    published = coord.cli("release", "publish", str(regulation_package(
        tmp_path, "1.1.0", today + dt.timedelta(days=2))), "--keys", str(keys))
    rid = published["rollout"]
    wait_until(lambda: "watching" in rollout(coord, rid)["reason"])
    time.sleep(3)  # more ticks: it never calls itself completed with nobody in it
    shown = rollout(coord, rid)
    assert shown["status"] == "running"
    assert shown["in_scope"] == 0
    product = installed_product(tmp_path / "first" / "acct", "1.0.0")
    spawn_agent("first", coord.join_string("Covered"), "--product", f"acct={product}",
                "--product-data", "acct=Data")
    wait_until(lambda: version_of(product) == "1.1.0", timeout=30)
    done = rollout_reaches(coord, rid, "completed", timeout=20)
    never_completed_while_missing(done)
    assert done["in_scope"] == 1
    # Inside the deadline window, but the rollout was delivering it: no technician was
    # called and no second install was pushed beside the rollout's.
    first = done["machines"][0]["machine"]
    assert coord.cli("incidents", "list", "--machine", first) == []
    assert [j["created_by"] for j in coord.cli("jobs", "list")] == [f"rollout:{rid}"]

    # Reinstalled from old media: it reports 1.0.0 again, and the rollout takes it back.
    shutil.rmtree(product)
    installed_product(product, "1.0.0")
    wait_until(lambda: version_of(product) == "1.1.0", timeout=30)
    again = rollout_reaches(coord, rid, "completed", timeout=20)
    assert counts_add_up(again) == {done["machines"][0]["machine"]: "installed"}

    # A machine that joins after completion reopens it; its install fails, which pauses the
    # rollout, and the deadline watch still hands it to a technician.
    broken = installed_product(tmp_path / "broken" / "acct", "1.0.0")
    (broken / "Data" / "fail").write_text("this machine's check fails")
    late = spawn_agent("broken", coord.join_string("Covered"), "--product", f"acct={broken}",
                       "--product-data", "acct=Data")
    paused = rollout_reaches(coord, rid, "paused", timeout=40)
    assert counts_add_up(paused)[late.agent_id] == "failed"
    kinds = {i["kind"] for i in coord.cli("incidents", "list", "--open", "--machine",
                                          late.agent_id)}
    assert kinds == {"update_failed", "regulation_deadline"}
    # The technician gets it; the version that just rolled back is not pushed again.
    assert [j["created_by"] for j in coord.cli("jobs", "list")] == [f"rollout:{rid}"] * 3
    assert version_of(broken) == "1.0.0"

    # The machine is retired (revoked): excused with a reason, the rollout may complete.
    coord.cli("agents", "revoke", late.agent_id)
    coord.cli("rollouts", "resume", str(rid))
    final = rollout_reaches(coord, rid, "completed", timeout=20)
    assert counts_add_up(final)[late.agent_id] == "retired"
    never_completed_while_missing(final)


def test_past_its_effective_date_a_machine_without_it_is_overdue(
    sqlite_coordinator, spawn_agent, tmp_path
):
    coord = sqlite_coordinator
    today = dt.datetime.now(dt.UTC).date()
    keys = tmp_path / "keys"
    coord.cli("release", "keys", "init", "--keys", str(keys))
    coord.cli("customers", "add", "Covered")
    coord.cli("contracts", "add", "--customer", "Covered", "--signed", today.isoformat())
    product = installed_product(tmp_path / "late" / "acct", "1.0.0")
    late = spawn_agent("late", coord.join_string("Covered"), "--product", f"acct={product}",
                       "--product-data", "acct=Data")
    wait_until(lambda: coord.agents()[late.agent_id]["products"].get("acct", {}).get(
        "version") == "1.0.0")
    late.stop()  # switched off before the release, until after its effective date
    published = coord.cli("release", "publish", str(regulation_package(
        tmp_path, "1.1.0", today - dt.timedelta(days=3))), "--keys", str(keys))
    rid = published["rollout"]
    wait_until(lambda: coord.cli("incidents", "list", "--open", "--machine", late.agent_id))
    shown = rollout(coord, rid)
    assert counts_add_up(shown) == {late.agent_id: "overdue"}
    assert shown["status"] == "running"
    assert [(r["in_scope"], r["overdue"]) for r in coord.cli("rollouts", "list")] == [(1, 1)]
    assert [i["kind"] for i in coord.cli("incidents", "list", "--open", "--machine",
                                         late.agent_id)] == ["regulation_deadline"]
    late.start()
    wait_until(lambda: version_of(product) == "1.1.0", timeout=30)
    done = rollout_reaches(coord, rid, "completed", timeout=20)
    assert counts_add_up(done) == {late.agent_id: "installed"}
    assert done["counts"]["overdue"] == 0
